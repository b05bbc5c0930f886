"""Start-up checks of what a run reads and writes: data, rewards, evaluation, the trainer, logging and the cluster
(the other half of `validation.validate`; the same rules as ever, each problem named by its key)."""

from __future__ import annotations

from pathlib import Path

from .checker import Checker, did_you_mean
from .schema import (
    DATA_DIR_ENV,
    DATA_SOURCES,
    ON_CHECKPOINT_ERROR,
    PLACEMENTS,
    RAY_BUILTIN_RESOURCES,
    ROLES,
    WANDB_MODES,
    Config,
    DataConfig,
    RewardConfig,
    default_data_dir,
    resolve_data_file,
)


def check_data(c: Checker, d: DataConfig, check_files: bool) -> None:
    from grpo_lambda.data.arithmetic import HARD_STEPS, OPS, STYLES
    from grpo_lambda.data.templates import PROMPT_TEMPLATES

    c.choice("data.source", d.source, DATA_SOURCES)
    c.choice("data.prompt_template", d.prompt_template, PROMPT_TEMPLATES)
    c.check(d.max_rows is None or d.max_rows >= 1, "data.max_rows", d.max_rows, "must be >= 1 or null")
    if d.source == "jsonl" and not d.train_files:
        c.fail(
            "data.train_files is empty but data.source='jsonl': list jsonl files, e.g. "
            "data.train_files=[math_train.jsonl], or use data=arithmetic"
        )
    if check_files:
        data_dir = Path(d.data_dir or default_data_dir()).expanduser()
        files = (
            ("data.train_files", d.train_files if d.source == "jsonl" else []),
            ("data.eval_files", d.eval_files),
        )
        for key, names in files:
            _check_data_files(c, key, names, data_dir)
    a = d.arithmetic
    if d.source == "arithmetic":
        c.check(a.num_rows >= 1, "data.arithmetic.num_rows", a.num_rows, "must be >= 1")
        c.check(a.eval_rows >= 0, "data.arithmetic.eval_rows", a.eval_rows, "must be >= 0")
        c.check(
            0 <= a.min_operand <= a.max_operand,
            "data.arithmetic.min_operand",
            a.min_operand,
            f"must be in [0, data.arithmetic.max_operand={a.max_operand}]",
        )
        c.check(a.num_terms >= 2, "data.arithmetic.num_terms", a.num_terms, "must be >= 2")
        c.check(
            a.max_terms is None or a.max_terms >= a.num_terms,
            "data.arithmetic.max_terms",
            a.max_terms,
            f"must be >= data.arithmetic.num_terms={a.num_terms} or null",
        )
        c.check(
            a.style not in ("story", "chain") or set(a.ops) <= {"+", "-"},
            "data.arithmetic.ops",
            a.ops,
            f"must be + and - only with data.arithmetic.style={a.style}",
        )
        c.choice("data.arithmetic.hard_step", a.hard_step, HARD_STEPS)
        c.check(a.easy_max >= 0, "data.arithmetic.easy_max", a.easy_max, "must be >= 0")
        c.check(
            a.eval_seed is None or a.eval_seed >= 0,
            "data.arithmetic.eval_seed",
            a.eval_seed,
            "must be >= 0 or null",
        )
        c.check(
            bool(a.ops) and all(op in OPS for op in a.ops),
            "data.arithmetic.ops",
            a.ops,
            f"must be a non-empty list of {', '.join(OPS)}",
        )
        c.choice("data.arithmetic.style", a.style, STYLES)


def check_reward(c: Checker, r: RewardConfig, prompt_template: str) -> None:
    from grpo_lambda.data.templates import PROMPT_TEMPLATES, answer_format
    from grpo_lambda.rewards.verifiers import MATH_FALLBACKS, VERIFIERS

    if r.strict_format and prompt_template in PROMPT_TEMPLATES:  # an unknown template is reported by _data
        try:
            answer_format(prompt_template, True)
        except ValueError as exc:
            c.fail(f"{exc} (data.prompt_template)")
        c.check(r.math_fallback == "none", "reward.math_fallback", r.math_fallback,
                "must be none with reward.strict_format=true (strict grading reads only the prompt's marker)")  # fmt: skip

    names = sorted(VERIFIERS)
    c.choice("reward.math_fallback", r.math_fallback, MATH_FALLBACKS)
    c.choice("reward.verifier", r.verifier, names)
    for name, verifier in r.verifier_by_dataset.items():
        c.choice(f"reward.verifier_by_dataset.{name}", verifier, names)
    c.check(r.correct > r.wrong, "reward.correct", r.correct, f"must be > reward.wrong={r.wrong}")
    c.check(r.num_workers >= 1, "reward.num_workers", r.num_workers, "must be >= 1")
    c.check(r.timeout_s > 0, "reward.timeout_s", r.timeout_s, "must be > 0")
    c.check(r.format_weight >= 0, "reward.format_weight", r.format_weight, "must be >= 0")


def _check_data_files(c: Checker, key: str, names: list[str], data_dir: Path, stems: bool = False) -> None:
    """Every name must be a file in `data_dir` (or a path); with `stems` (eval.datasets) a name without a suffix
    means <name>.jsonl, as build_eval_rows reads it."""
    from grpo_lambda.data.datasets import dataset_file

    for i, name in enumerate(names):
        file = dataset_file(name) if stems else name
        if not resolve_data_file(file, data_dir).is_file():
            have = sorted(p.name for p in data_dir.glob("*.jsonl")) if data_dir.is_dir() else []
            where = f"in data.data_dir={str(data_dir)!r}"
            if not data_dir.is_dir():
                where = f"({where[3:]} does not exist: set data.data_dir or ${DATA_DIR_ENV})"
            c.fail(f"{key}[{i}]={name!r} not found {where}{did_you_mean(file, have)}")


def check_eval_trainer(c: Checker, cfg: Config, check_files: bool) -> None:
    e, t = cfg.eval, cfg.trainer
    c.check(e.samples_per_prompt >= 1, "eval.samples_per_prompt", e.samples_per_prompt, "must be >= 1")
    c.check(e.temperature >= 0, "eval.temperature", e.temperature, "must be >= 0 (0 = greedy)")
    c.check(
        e.temperature > 0 or e.samples_per_prompt == 1,
        "eval.samples_per_prompt",
        e.samples_per_prompt,
        "must be 1 when eval.temperature=0 (greedy samples are all the same)",
    )
    c.check(len(set(e.datasets)) == len(e.datasets), "eval.datasets", e.datasets, "lists a dataset twice")
    if check_files and e.datasets:
        _check_data_files(
            c,
            "eval.datasets",
            e.datasets,
            Path(cfg.data.data_dir or default_data_dir()).expanduser(),
            stems=True,
        )
    c.check(0 < e.top_p <= 1, "eval.top_p", e.top_p, "must be in (0, 1]")
    for key in ("max_response_tokens", "max_prompts_per_dataset"):
        value = getattr(e, key)
        c.check(value is None or value >= 1, f"eval.{key}", value, "must be >= 1 or null")
    c.check(t.total_steps >= 1, "trainer.total_steps", t.total_steps, "must be >= 1")
    c.check(t.seed >= 0, "trainer.seed", t.seed, "must be >= 0")
    c.check(bool(t.output_dir), "trainer.output_dir", t.output_dir, "must be a folder path")
    c.check(
        bool(t.run_name) and "/" not in t.run_name and t.run_name not in (".", ".."),
        "trainer.run_name",
        t.run_name,
        "must be a plain folder name (no '/')",
    )
    c.check(
        t.save_every_steps >= 0, "trainer.save_every_steps", t.save_every_steps, "must be >= 0 (0 = at end)"
    )
    c.check(t.keep_checkpoints >= 0, "trainer.keep_checkpoints", t.keep_checkpoints, "must be >= 0 (0 = all)")
    c.choice("trainer.on_checkpoint_error", t.on_checkpoint_error, ON_CHECKPOINT_ERROR)
    c.check(t.max_consecutive_skips >= 0, "trainer.max_consecutive_skips", t.max_consecutive_skips,
            "must be >= 0 (0 = stop at the first step whose updates were all skipped)")  # fmt: skip
    c.check(
        t.eval_every_steps >= 0, "trainer.eval_every_steps", t.eval_every_steps, "must be >= 0 (0 = never)"
    )
    c.check(t.log_every_steps >= 1, "trainer.log_every_steps", t.log_every_steps, "must be >= 1")
    if t.resume not in ("auto", "never") and check_files and not Path(t.resume).expanduser().exists():
        c.fail(f"trainer.resume={t.resume!r} must be 'auto', 'never' or an existing checkpoint path")
    has_eval = (
        bool(cfg.eval.datasets)
        or bool(cfg.data.eval_files)
        or (cfg.data.source == "arithmetic" and cfg.data.arithmetic.eval_rows > 0)
    )
    if (t.eval_every_steps > 0 or t.eval_before_train) and not has_eval:
        c.fail(
            "trainer.eval_every_steps / eval_before_train ask for evaluation but there is no eval set: "
            "set eval.datasets or data.eval_files (or data.arithmetic.eval_rows for data=arithmetic)"
        )


def check_logger_cluster(c: Checker, cfg: Config) -> None:
    c.choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    c.check(
        bool(cfg.logger.wandb.project), "logger.wandb.project", cfg.logger.wandb.project, "must be non-empty"
    )
    k = cfg.cluster
    c.choice("cluster.placement", k.placement, PLACEMENTS)
    c.check(k.num_cpus is None or k.num_cpus >= 1, "cluster.num_cpus", k.num_cpus, "must be >= 1 or null")
    c.check(k.num_gpus is None or k.num_gpus >= 0, "cluster.num_gpus", k.num_gpus, "must be >= 0 or null")
    c.check(k.num_nodes is None or k.num_nodes >= 1, "cluster.num_nodes", k.num_nodes, "must be >= 1 or null")
    if k.num_nodes and k.num_nodes > 1 and not k.address:
        c.fail(f"cluster.num_nodes={k.num_nodes} needs cluster.address (a local Ray has one node): start Ray on "
               "the nodes (`ray start`, docs/launch.md) and join with cluster.address=HEAD_IP:PORT")  # fmt: skip
    c.check(k.join_timeout_s > 0, "cluster.join_timeout_s", k.join_timeout_s, "must be > 0")
    c.check(k.placement_timeout_s > 0, "cluster.placement_timeout_s", k.placement_timeout_s, "must be > 0")
    for role, resources in k.role_resources.items():
        if role not in ROLES:
            c.fail(f"cluster.role_resources.{role} is not a role: use one of {', '.join(ROLES)}"
                   + did_you_mean(role, ROLES))  # fmt: skip
        for name, amount in (resources or {}).items():
            if name in RAY_BUILTIN_RESOURCES or name.startswith("node:"):
                c.fail(f"cluster.role_resources.{role}.{name}: give custom resources only (CPUs and GPUs come "
                       "from learner.num_cpus_per_rank and the cluster; pin to a node with a resource its "
                       "`ray start --resources` declares)")  # fmt: skip
            c.check(amount > 0, f"cluster.role_resources.{role}.{name}", amount,
                    "must be > 0 (a fraction such as 0.01 pins without limiting how many actors share the node)")  # fmt: skip
