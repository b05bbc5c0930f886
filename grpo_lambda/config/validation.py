"""Start-up checks of a run configuration: every rule once, each problem named by its key and what to do.

`validate(cfg)` collects every problem and raises one `ConfigError` listing them all. Allowed names come from the
registries that implement them (advantage estimators, policy losses, KL estimators, aggregations and trace styles
from `grpo_lambda.algorithms`; verifiers, prompt templates, built-in models, arithmetic operators from their
modules) and from the schema's tuples for plain choices, so a new registry entry is valid config at once.
Runtime code does not re-check these values: a component trusts the validated config it is given.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .schema import (
    ATTN_IMPLEMENTATIONS,
    DATA_DIR_ENV,
    DATA_SOURCES,
    LEARNER_BACKENDS,
    LR_SCHEDULES,
    MODEL_DTYPES,
    ON_CHECKPOINT_ERROR,
    OPTIMIZERS,
    PLACEMENTS,
    RAY_BUILTIN_RESOURCES,
    ROLES,
    ROLLOUT_DTYPES,
    ROLLOUT_ENGINES,
    STALE_POLICIES,
    SYNC_BACKENDS,
    WANDB_MODES,
    WEIGHT_SYNCS,
    AlgorithmConfig,
    Config,
    DataConfig,
    ModelConfig,
    RewardConfig,
    default_data_dir,
    resolve_data_file,
)


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and what to do."""


def did_you_mean(word: str, candidates: Iterable[Any]) -> str:
    close = difflib.get_close_matches(word, [str(x) for x in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Checker:
    """Collects every problem found, so that one ConfigError can list them all."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, msg: str) -> None:
        self.errors.append(msg)

    def choice(self, key: str, value: Any, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        if value not in allowed:
            self.fail(
                f"{key}={value!r} is not one of: {', '.join(allowed)}{did_you_mean(str(value), allowed)}"
            )

    def check(self, ok: bool, key: str, value: Any, must: str) -> None:
        if not ok:
            self.fail(f"{key}={value!r} {must}")


def validate(cfg: Config, check_files: bool = True) -> Config:
    """Check values and cross-field rules; raise ConfigError listing every problem with its key.

    `check_files` also checks that data files, model folders and resume paths exist."""
    c = _Checker()
    _algorithm(c, cfg.algorithm)
    _model(c, cfg.model, check_files)
    _rollout(c, cfg)
    _learner(c, cfg)
    _batch_sizes(c, cfg)
    _data(c, cfg.data, check_files)
    _reward(c, cfg.reward, cfg.data.prompt_template)
    _eval_trainer(c, cfg, check_files)
    _logger_cluster(c, cfg)
    if c.errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(c.errors))
    return cfg


def _algorithm(c: _Checker, a: AlgorithmConfig) -> None:
    from grpo_lambda.algorithms import (
        ADVANTAGE_ESTIMATORS,
        AGGREGATIONS,
        KL_ESTIMATORS,
        POLICY_LOSSES,
        TRACE_ANCHORS,
        TRACE_NORMS,
        TRACE_STYLES,
    )
    from grpo_lambda.algorithms.loss_config import BEHAVIOUR_IS, BEHAVIOUR_IS_AUTO

    c.choice("algorithm.adv_estimator", a.adv_estimator, ADVANTAGE_ESTIMATORS.names())
    c.choice("algorithm.policy_loss", a.policy_loss, POLICY_LOSSES.names())
    c.choice("algorithm.trace_style", a.trace_style, TRACE_STYLES)
    c.choice("algorithm.trace_anchor", a.trace_anchor, TRACE_ANCHORS)
    c.choice("algorithm.trace_norm", a.trace_norm, TRACE_NORMS)
    c.choice("algorithm.kl_estimator", a.kl_estimator, KL_ESTIMATORS.names())
    c.choice("algorithm.loss_agg", a.loss_agg, AGGREGATIONS.names())
    c.check(a.adv_eps > 0, "algorithm.adv_eps", a.adv_eps, "must be > 0")
    c.check(
        a.neg_adv_clamp is None or a.neg_adv_clamp <= 0,
        "algorithm.neg_adv_clamp",
        a.neg_adv_clamp,
        "must be <= 0 (paper: -0.1) or null",
    )
    c.check(0 < a.clip_eps_low < 1, "algorithm.clip_eps_low", a.clip_eps_low, "must be in (0, 1)")
    c.check(a.clip_eps_high > 0, "algorithm.clip_eps_high", a.clip_eps_high, "must be > 0")
    c.check(
        a.dual_clip_c is None or a.dual_clip_c > 1,
        "algorithm.dual_clip_c",
        a.dual_clip_c,
        "must be > 1 or null",
    )
    for key in ("gamma", "lam", "trace_floor"):  # the domain lambda_trace accepts
        value = getattr(a, key)
        c.check(0 <= value <= 1, f"algorithm.{key}", value, "must be in [0, 1]")
    c.check(a.kl_coef >= 0, "algorithm.kl_coef", a.kl_coef, "must be >= 0 (0 = no KL term)")
    c.check(a.entropy_coef >= 0, "algorithm.entropy_coef", a.entropy_coef, "must be >= 0")
    c.check(a.max_log_ratio > 0, "algorithm.max_log_ratio", a.max_log_ratio, "must be > 0")
    c.choice("algorithm.behaviour_is", a.behaviour_is, (BEHAVIOUR_IS_AUTO, *BEHAVIOUR_IS))
    c.check(a.behaviour_is_cap >= 1, "algorithm.behaviour_is_cap", a.behaviour_is_cap, "must be >= 1")
    c.check(
        a.dynamic_sampling_reward_std_eps >= 0,
        "algorithm.dynamic_sampling_reward_std_eps",
        a.dynamic_sampling_reward_std_eps,
        "must be >= 0",
    )
    c.check(a.max_refill_rounds >= 0, "algorithm.max_refill_rounds", a.max_refill_rounds, "must be >= 0")


def _model(c: _Checker, m: ModelConfig, check_files: bool) -> None:
    from grpo_lambda.models.registry import MODEL_NAMES

    c.choice("model.dtype", m.dtype, MODEL_DTYPES)
    c.choice("model.attn_implementation", m.attn_implementation, ATTN_IMPLEMENTATIONS)
    c.check(
        bool(m.path), "model.path", m.path, "must be a local HF folder or one of " + ", ".join(MODEL_NAMES)
    )
    if check_files:
        for key, path in (("model.path", m.path), ("model.tokenizer_path", m.tokenizer_path)):
            if path and path not in MODEL_NAMES and not Path(path).expanduser().is_dir():
                c.fail(
                    f"{key}={path!r} is not a folder (no model hub here: give a local HF model folder, "
                    f"or one of {', '.join(MODEL_NAMES)}){did_you_mean(path, MODEL_NAMES)}"
                )
    c.check(m.max_prompt_tokens >= 1, "model.max_prompt_tokens", m.max_prompt_tokens, "must be >= 1")
    c.check(m.max_response_tokens >= 1, "model.max_response_tokens", m.max_response_tokens, "must be >= 1")
    c.check(m.lora.rank >= 0, "model.lora.rank", m.lora.rank, "must be >= 0 (0 = off)")
    c.check(m.lora.alpha > 0, "model.lora.alpha", m.lora.alpha, "must be > 0")
    c.check(0 <= m.lora.dropout < 1, "model.lora.dropout", m.lora.dropout, "must be in [0, 1)")
    c.check(
        m.lora.rank == 0 or bool(m.lora.target_modules),
        "model.lora.target_modules",
        m.lora.target_modules,
        "must name at least one module when model.lora.rank > 0",
    )


def _rollout(c: _Checker, cfg: Config) -> None:
    r = cfg.rollout
    c.choice("rollout.engine", r.engine, ROLLOUT_ENGINES)
    c.choice("rollout.dtype", r.dtype, ROLLOUT_DTYPES)
    c.check(r.num_workers >= 1, "rollout.num_workers", r.num_workers, "must be >= 1")
    c.check(
        r.samples_per_prompt >= 2,
        "rollout.samples_per_prompt",
        r.samples_per_prompt,
        "must be >= 2 (group advantages compare the G samples of a prompt)",
    )
    c.check(
        r.temperature > 0,
        "rollout.temperature",
        r.temperature,
        "must be > 0 (greedy samples are identical and get zero advantage)",
    )
    c.check(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]")
    c.check(r.top_k == -1 or r.top_k >= 1, "rollout.top_k", r.top_k, "must be -1 (off) or >= 1")
    c.check(r.kv_cache_gib > 0, "rollout.kv_cache_gib", r.kv_cache_gib, "must be > 0")
    c.check(
        0 < r.gpu_memory_utilization <= 1,
        "rollout.gpu_memory_utilization",
        r.gpu_memory_utilization,
        "must be in (0, 1]",
    )
    c.check(
        r.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", r.tensor_parallel_size, "must be >= 1"
    )
    c.check(r.sync_timeout_s > 0, "rollout.sync_timeout_s", r.sync_timeout_s, "must be > 0")
    c.check(r.generate_timeout_s > 0, "rollout.generate_timeout_s", r.generate_timeout_s, "must be > 0")
    c.check(r.max_engine_restarts >= 0, "rollout.max_engine_restarts", r.max_engine_restarts, "must be >= 0")
    c.choice("rollout.weight_sync", r.weight_sync, WEIGHT_SYNCS)
    c.choice("rollout.sync_backend", r.sync_backend, SYNC_BACKENDS)
    c.check(r.max_staleness is None or r.max_staleness >= 0, "rollout.max_staleness", r.max_staleness,
            "must be >= 0 (0 = synchronous) or null (by placement)")  # fmt: skip
    c.choice("rollout.stale_policy", r.stale_policy, STALE_POLICIES)
    c.check(r.sync_bucket_mb > 0, "rollout.sync_bucket_mb", r.sync_bucket_mb, "must be > 0")
    if r.sync_backend == "nccl" and cfg.cluster.num_gpus == 0:
        c.fail("rollout.sync_backend='nccl' needs GPUs but cluster.num_gpus=0: use rollout.sync_backend=auto")


def _learner(c: _Checker, cfg: Config) -> None:
    lr = cfg.learner
    c.check(lr.world_size >= 1, "learner.world_size", lr.world_size, "must be >= 1")
    c.check(lr.zero_stage in (0, 1, 2, 3), "learner.zero_stage", lr.zero_stage, "must be 0, 1, 2 or 3")
    c.check(lr.lr > 0, "learner.lr", lr.lr, "must be > 0")
    c.check(lr.weight_decay >= 0, "learner.weight_decay", lr.weight_decay, "must be >= 0")
    c.check(
        len(lr.betas) == 2 and all(0 <= b < 1 for b in lr.betas),
        "learner.betas",
        lr.betas,
        "must be two numbers in [0, 1), e.g. [0.9, 0.999]",
    )
    c.check(lr.adam_eps > 0, "learner.adam_eps", lr.adam_eps, "must be > 0")
    c.check(lr.grad_clip >= 0, "learner.grad_clip", lr.grad_clip, "must be >= 0 (0 = off)")
    c.choice("learner.optimizer", lr.optimizer, OPTIMIZERS)
    c.choice("learner.lr_schedule", lr.lr_schedule, LR_SCHEDULES)
    c.check(lr.warmup_steps >= 0, "learner.warmup_steps", lr.warmup_steps, "must be >= 0")
    if lr.pack_groups and cfg.model.attn_implementation == "flash_attention_2":
        c.fail("learner.pack_groups needs an attention that takes a custom mask: model.attn_implementation=auto, "
               "eager or sdpa (flash_attention_2 has no packed path yet)")  # fmt: skip
    if lr.warmup_steps > 0 and lr.lr_schedule != "linear_warmup":
        c.fail(f"learner.warmup_steps={lr.warmup_steps} needs learner.lr_schedule=linear_warmup")
    c.check(
        lr.logp_micro_batch_samples is None or lr.logp_micro_batch_samples >= 1,
        "learner.logp_micro_batch_samples",
        lr.logp_micro_batch_samples,
        "must be >= 1 or null",
    )
    c.check(lr.epochs_per_batch >= 1, "learner.epochs_per_batch", lr.epochs_per_batch, "must be >= 1")
    c.check(
        lr.micro_batch_tokens is None or lr.micro_batch_tokens >= 1,
        "learner.micro_batch_tokens",
        lr.micro_batch_tokens,
        "must be >= 1 or null",
    )
    if lr.offload and lr.zero_stage == 0:
        c.fail("learner.offload=true needs learner.zero_stage >= 1 (ZeRO-Offload)")
    if cfg.model.lora.rank > 0 and lr.zero_stage == 3:
        c.fail(
            f"model.lora.rank={cfg.model.lora.rank} is not supported with learner.zero_stage=3: use learner=zero2"
        )
    c.choice("learner.backend", lr.backend, LEARNER_BACKENDS)
    if lr.backend == "nccl" and cfg.cluster.num_gpus == 0:
        c.fail("learner.backend='nccl' needs GPUs but cluster.num_gpus=0: use learner.backend=gloo or auto")
    c.check(lr.num_cpus_per_rank > 0, "learner.num_cpus_per_rank", lr.num_cpus_per_rank, "must be > 0")


def _batch_sizes(c: _Checker, cfg: Config) -> None:
    """P·G samples per step = whole mini-batches; each rank runs whole micro-batches of each mini-batch."""
    lr, prompts = cfg.learner, cfg.data.prompts_per_step
    mini, micro = lr.mini_batch_samples, lr.micro_batch_samples
    c.check(prompts >= 1, "data.prompts_per_step", prompts, "must be >= 1")
    c.check(mini >= 1, "learner.mini_batch_samples", mini, "must be >= 1")
    c.check(micro >= 1, "learner.micro_batch_samples", micro, "must be >= 1")
    if mini < 1 or micro < 1 or lr.world_size < 1 or prompts < 1:
        return
    per_step = cfg.samples_per_step
    if per_step % mini:
        c.fail(
            f"learner.mini_batch_samples={mini} must divide the samples per step data.prompts_per_step × "
            f"rollout.samples_per_prompt = {prompts} × {cfg.rollout.samples_per_prompt} = {per_step}"
        )
    if lr.micro_batch_tokens and mini % lr.world_size:  # a token budget: each rank just needs whole rows
        c.fail(
            f"learner.world_size={lr.world_size} must divide learner.mini_batch_samples={mini} (rows per rank)"
        )
    elif not lr.micro_batch_tokens and mini % (micro * lr.world_size):
        c.fail(
            f"learner.micro_batch_samples={micro} × learner.world_size={lr.world_size} = "
            f"{micro * lr.world_size} must divide learner.mini_batch_samples={mini} "
            "(each rank runs whole micro-batches)"
        )


def _data(c: _Checker, d: DataConfig, check_files: bool) -> None:
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


def _reward(c: _Checker, r: RewardConfig, prompt_template: str) -> None:
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


def _check_data_files(c: _Checker, key: str, names: list[str], data_dir: Path, stems: bool = False) -> None:
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


def _eval_trainer(c: _Checker, cfg: Config, check_files: bool) -> None:
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


def _logger_cluster(c: _Checker, cfg: Config) -> None:
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
