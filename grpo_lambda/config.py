"""Typed run configuration: dataclass schema, Hydra composition and start-up validation.

The dataclasses below are the schema of ``conf/`` (registered in Hydra's ConfigStore as ``grpo_lambda_schema``
and listed first in ``conf/config.yaml``'s defaults), so an unknown key in a yaml file or on the command line
fails at compose time with the key's full path. :func:`validate` then checks values and cross-field rules
(enums, ranges, batch-size divisibility) and raises :class:`ConfigError` naming the key and what to do.

Batch sizes carry their unit in the name: ``data.prompts_per_step`` (prompts), ``rollout.samples_per_prompt``
(G, responses per prompt), ``learner.mini_batch_samples`` (responses per optimiser step, global) and
``learner.micro_batch_samples`` (responses per forward/backward, per learner rank).

Typical use::

    cfg = load_config(["algorithm.lam=0.5", "learner=zero3"])   # tests, scripts
    cfg = to_config(dict_config)                                 # inside a @hydra.main entry point
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from grpo_lambda.tracking import DEFAULT_CONSOLE_KEYS

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = Path(__file__).parent / "conf"  # a symlink to the repository's conf/ (a copy inside a wheel)
SCHEMA_NAME = "grpo_lambda_schema"
DATA_DIR_ENV = "GRPO_LAMBDA_DATA_DIR"

# Names users write in configs; the registries in grpo_lambda.algorithms / rewards / data use the same keys.
ADV_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
POLICY_LOSSES = ("ppo", "trace", "weight")
TRACE_STYLES = ("recent", "both", "early")
TRACE_ANCHORS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
MODEL_DTYPES = ("float32", "bfloat16")
ROLLOUT_DTYPES = ("auto", "float32", "bfloat16", "float16")
ROLLOUT_ENGINES = ("vllm",)
LR_SCHEDULES = ("constant", "linear_warmup")
OPTIMIZERS = ("adamw", "sgd")
BACKENDS = ("auto", "gloo", "nccl")
DATA_SOURCES = ("jsonl", "arithmetic")
ARITHMETIC_OPS = ("+", "-", "*")
ARITHMETIC_STYLES = ("expression", "word", "mixed")
WANDB_MODES = ("offline", "online", "disabled")
PLACEMENTS = ("colocated", "split")
WEIGHT_SYNCS = ("auto", "broadcast", "object_store")
SYNC_BACKENDS = ("auto", "gloo", "nccl")
BUILTIN_MODELS = ("tiny", "smollm2-135m-instruct")  # names the model builder resolves without a folder


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and what to do."""


# ----------------------------------------------------------------------------------------------- schema
@dataclass
class AlgorithmConfig:
    """GRPO / GRPO-λ loss. Defaults are the paper's GRPO-λ (ε-trace, style both, λ 0.99, clamp −0.1)."""

    name: str = "grpo_lambda"
    adv_estimator: str = "grpo"  # Â_i = (R_i − mean_G R) / (std_G R + adv_eps); dr_grpo: no std; rloo
    adv_eps: float = 1e-6
    neg_adv_clamp: float | None = -0.1  # Â ← max(Â, c); null = off
    policy_loss: str = "trace"  # ppo (ratio) | trace (ε-trace) | weight (ε-weight)
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = None  # dual-clip bound (> 1) for negative advantages; null = off
    gamma: float = 1.0
    lam: float = 0.99  # λ; a = γλ is the trace decay
    trace_style: str = "both"  # recent: a^(t−k); both: max(a^(t−k), a^k); early: a^k
    trace_anchor: str = "token"  # token (paper) | sequence (authors' veRL code: lag from the last token)
    trace_floor: float = 0.0  # floor on off-diagonal trace weights (authors' code: 1e-7)
    kl_estimator: str = "k3"
    kl_coef: float = 0.001  # β; 0 = no reference model
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    dynamic_sampling: bool = False  # drop prompts whose G rewards have std <= eps, refill from the sampler
    dynamic_sampling_reward_std_eps: float = 1e-6
    max_refill_rounds: int = 3


@dataclass
class LoraConfig:
    rank: int = 0  # 0 = full fine-tuning
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    name: str = "model"  # label for logs and run names
    path: str = MISSING  # local HF folder, or a built-in name: tiny | smollm2-135m-instruct
    tokenizer_path: str | None = None  # null = same as path
    dtype: str = "float32"  # learner weights/compute dtype
    max_prompt_tokens: int = 512
    max_response_tokens: int = 1024
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    use_chat_template: bool = True


@dataclass
class RolloutConfig:
    engine: str = "vllm"
    num_workers: int = 1  # RolloutWorker actors, one engine each
    samples_per_prompt: int = 8  # G
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    kv_cache_gib: float = 1.0  # CPU engines: VLLM_CPU_KVCACHE_SPACE
    gpu_memory_utilization: float = 0.6  # GPU engines
    enforce_eager: bool = True
    dtype: str = "auto"  # auto = model.dtype
    tensor_parallel_size: int = 1
    # learner -> engines: broadcast (bucketed, over a gloo/nccl group), object_store (Ray), auto (= broadcast)
    weight_sync: str = "auto"
    sync_backend: str = "auto"  # broadcast group: auto = nccl between GPUs in split placement, else gloo
    sync_bucket_mb: float = 256.0  # broadcast bucket size
    sync_check: bool = False  # after each weight sync, check engine weights equal the learner's
    sync_timeout_s: float = 300.0


@dataclass
class LearnerConfig:
    world_size: int = 2  # DeepSpeed ranks (Ray actors)
    zero_stage: int = 2
    optimizer: str = "adamw"  # adamw | sgd (plain; exactness tests, ablations)
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    lr_schedule: str = "constant"  # constant | linear_warmup (linear from 0 over warmup_steps, then constant)
    warmup_steps: int = 0  # optimiser steps
    mini_batch_samples: int = 64  # responses per optimiser step (all ranks together)
    micro_batch_samples: int = 8  # responses per forward/backward on one rank
    logp_micro_batch_samples: int | None = (
        None  # responses per log-prob-only forward; null = micro_batch_samples
    )
    epochs_per_batch: int = 1  # passes over each rollout batch
    offload: bool = False  # ZeRO optimizer (and, at stage 3, parameter) offload to CPU
    backend: str = "auto"  # torch.distributed: auto = nccl on GPU, gloo on CPU
    num_cpus_per_rank: float = 1.0


@dataclass
class ArithmeticConfig:
    """Synthetic integer sums ("What is 12 + 7?") for the CPU demo and tests; see grpo_lambda.data.arithmetic."""

    num_rows: int = 10000
    eval_rows: int = 200  # generated with a different seed; 0 = no eval set
    min_operand: int = 0
    max_operand: int = 20
    num_terms: int = 2
    ops: list[str] = field(default_factory=lambda: ["+", "-"])
    style: str = "expression"  # expression | word | mixed
    allow_negative: bool = False


@dataclass
class DataConfig:
    source: str = "jsonl"  # jsonl (train_files) | arithmetic (synthetic)
    data_dir: str | None = None  # null: $GRPO_LAMBDA_DATA_DIR, else the shared/data folder beside the repo
    train_files: list[str] = field(default_factory=list)  # relative to data_dir, or absolute
    eval_files: list[str] = field(default_factory=list)
    prompts_per_step: int = 8  # P
    prompt_template: str = "qwen_math"
    shuffle: bool = True
    seed: int = 0
    max_rows: int | None = None  # cap on training rows (first rows of the files)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)


@dataclass
class RewardConfig:
    verifier: str = "math"  # default verifier
    verifier_by_dataset: dict[str, str] = field(default_factory=dict)  # dataset (file stem) -> verifier
    correct: float = 1.0  # reward of a correct answer
    wrong: float = 0.0  # reward of any other outcome (wrong, unparsable, timeout)
    num_workers: int = 2
    timeout_s: float = 5.0  # hard limit per check (subprocess)
    format_weight: float = 0.0  # reward += format_weight * format_ok


@dataclass
class EvalConfig:
    samples_per_prompt: int = 4  # k for avg@k / pass@k
    temperature: float = 0.6
    top_p: float = 0.95
    max_response_tokens: int | None = None  # null = model.max_response_tokens
    max_prompts_per_dataset: int | None = None  # null = all


@dataclass
class TrainerConfig:
    total_steps: int = 100
    seed: int = 0
    output_dir: str = "runs"
    run_name: str = "run"  # run folder = output_dir/run_name; resume=auto continues it
    save_every_steps: int = 50  # 0 = only at the end
    keep_checkpoints: int = 2  # 0 = keep all
    resume: str = "auto"  # auto | never | path to a checkpoint folder
    eval_every_steps: int = 0  # 0 = never
    eval_before_train: bool = False
    log_every_steps: int = 1


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str = "grpo-lambda"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    console: bool = True
    jsonl: bool = True
    plot: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    console_keys: list[str] = field(default_factory=lambda: list(DEFAULT_CONSOLE_KEYS))


@dataclass
class ClusterConfig:
    address: str | None = None  # null = start a local Ray; "auto" = join a running cluster
    num_cpus: int | None = None  # null = all (local Ray only)
    num_gpus: int | None = None  # null = detect
    placement: str = "colocated"  # colocated: rollout and learner share devices; split: separate
    ray_dashboard: bool = False
    bind_localhost: bool = True  # keep Ray's ports on 127.0.0.1 (local clusters)
    env_vars: dict[str, str] = field(default_factory=dict)  # extra runtime_env variables for every actor


@dataclass
class Config:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def samples_per_step(self) -> int:
        """Responses generated per training step: P · G."""
        return self.data.prompts_per_step * self.rollout.samples_per_prompt

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per rank per optimiser step."""
        return self.learner.mini_batch_samples // (self.learner.micro_batch_samples * self.learner.world_size)

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.samples_per_step // self.learner.mini_batch_samples * self.learner.epochs_per_batch

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.output_dir) / self.trainer.run_name


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (done on import; idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


register_configs()


# ------------------------------------------------------------------------------------------- public API
def default_data_dir() -> Path:
    """``$GRPO_LAMBDA_DATA_DIR`` if set, else ``shared/data`` beside the repository checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def load_config(
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    config_name: str = "config",
    check_files: bool = True,
) -> Config:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides (CLI syntax) and return a validated Config.

    Raises ConfigError naming the key for unknown keys, bad values and failed checks.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    config_dir = Path(config_dir or CONF_DIR).resolve()
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="grpo_lambda"):
            dcfg = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain_compose_error(exc)) from None
    except ValueError as exc:  # e.g. `experiment=null` for a group with a default
        raise ConfigError(
            f"{exc} (overrides {overrides}); to drop a default group use ~group, e.g. ~experiment"
        ) from None
    return to_config(dcfg, check_files=check_files)


def to_config(cfg: DictConfig | dict | Config, check_files: bool = True) -> Config:
    """Convert a composed DictConfig (or plain dict) to a validated :class:`Config`.

    ``check_files`` also checks that data files, model folders and resume paths exist.
    """
    if isinstance(cfg, Config):
        out = cfg
    else:
        cfg = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
        cfg.pop("hydra", None)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
            out = OmegaConf.to_object(merged)
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain_omegaconf_error(exc)) from None
    if out.data.data_dir is None:
        out.data.data_dir = str(default_data_dir())
    validate(out, check_files=check_files)
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (JSON/wandb friendly)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def check_overrides_or_exit(argv: list[str] | None = None) -> None:
    """Fail fast on the command line: compose + validate ``argv`` overrides, print the error and exit 2.

    Meant as the first line of a ``@hydra.main`` entry point's ``main()`` so that a misspelt key gets a
    "did you mean" hint before Hydra starts. Arguments that are Hydra flags (``-m``, ``--cfg`` ...) or
    ``hydra.*`` overrides make it return without checking (Hydra then reports as usual).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.startswith("-") for a in argv):
        return
    overrides = [
        a for a in argv if ("=" in a or a.startswith("~")) and not a.lstrip("+~").startswith("hydra.")
    ]
    try:
        load_config(overrides)
    except ConfigError as exc:
        print(f"Config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------- validation
class _Checker:
    """Collects every problem found, so that one ConfigError can list them all."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, msg: str) -> None:
        self.errors.append(msg)

    def choice(self, key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
        if value not in allowed:
            self.fail(
                f"{key}={value!r} is not one of: {', '.join(allowed)}{_did_you_mean(str(value), allowed)}"
            )

    def check(self, ok: bool, key: str, value: Any, must: str) -> None:
        if not ok:
            self.fail(f"{key}={value!r} {must}")


def validate(cfg: Config, check_files: bool = True) -> Config:
    """Check values and cross-field rules; raise ConfigError listing every problem with its key."""
    c = _Checker()
    _validate_algorithm(c, cfg.algorithm)
    _validate_model(c, cfg.model, check_files)
    _validate_rollout(c, cfg)
    _validate_learner(c, cfg)
    _validate_data(c, cfg.data, check_files)
    _validate_reward(c, cfg.reward)
    _validate_eval_trainer(c, cfg, check_files)
    _validate_logger_cluster(c, cfg)
    if c.errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(c.errors))
    return cfg


def _validate_algorithm(c: _Checker, a: AlgorithmConfig) -> None:
    c.choice("algorithm.adv_estimator", a.adv_estimator, ADV_ESTIMATORS)
    c.choice("algorithm.policy_loss", a.policy_loss, POLICY_LOSSES)
    c.choice("algorithm.trace_style", a.trace_style, TRACE_STYLES)
    c.choice("algorithm.trace_anchor", a.trace_anchor, TRACE_ANCHORS)
    c.choice("algorithm.kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    c.choice("algorithm.loss_agg", a.loss_agg, LOSS_AGGS)
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
    c.check(0 < a.gamma <= 1, "algorithm.gamma", a.gamma, "must be in (0, 1]")
    c.check(0 <= a.lam <= 1, "algorithm.lam", a.lam, "must be in [0, 1]")
    c.check(0 <= a.trace_floor < 1, "algorithm.trace_floor", a.trace_floor, "must be in [0, 1)")
    c.check(a.kl_coef >= 0, "algorithm.kl_coef", a.kl_coef, "must be >= 0 (0 = no KL term)")
    c.check(a.entropy_coef >= 0, "algorithm.entropy_coef", a.entropy_coef, "must be >= 0")
    c.check(
        a.dynamic_sampling_reward_std_eps >= 0,
        "algorithm.dynamic_sampling_reward_std_eps",
        a.dynamic_sampling_reward_std_eps,
        "must be >= 0",
    )
    c.check(a.max_refill_rounds >= 0, "algorithm.max_refill_rounds", a.max_refill_rounds, "must be >= 0")


def _validate_model(c: _Checker, m: ModelConfig, check_files: bool) -> None:
    c.choice("model.dtype", m.dtype, MODEL_DTYPES)
    c.check(
        bool(m.path), "model.path", m.path, "must be a local HF folder or one of " + ", ".join(BUILTIN_MODELS)
    )
    if check_files:
        for key, path in (("model.path", m.path), ("model.tokenizer_path", m.tokenizer_path)):
            if path and path not in BUILTIN_MODELS and not Path(path).expanduser().is_dir():
                c.fail(
                    f"{key}={path!r} is not a folder (no model hub here: give a local HF model folder, "
                    f"or one of {', '.join(BUILTIN_MODELS)}){_did_you_mean(path, BUILTIN_MODELS)}"
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


def _validate_rollout(c: _Checker, cfg: Config) -> None:
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
    c.choice("rollout.weight_sync", r.weight_sync, WEIGHT_SYNCS)
    c.choice("rollout.sync_backend", r.sync_backend, SYNC_BACKENDS)
    c.check(r.sync_bucket_mb > 0, "rollout.sync_bucket_mb", r.sync_bucket_mb, "must be > 0")


def _validate_learner(c: _Checker, cfg: Config) -> None:
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
    if lr.warmup_steps > 0 and lr.lr_schedule != "linear_warmup":
        c.fail(f"learner.warmup_steps={lr.warmup_steps} needs learner.lr_schedule=linear_warmup")
    c.check(
        lr.logp_micro_batch_samples is None or lr.logp_micro_batch_samples >= 1,
        "learner.logp_micro_batch_samples",
        lr.logp_micro_batch_samples,
        "must be >= 1 or null",
    )
    if cfg.model.lora.rank > 0 and lr.zero_stage == 3:
        c.fail(
            f"model.lora.rank={cfg.model.lora.rank} is not supported with learner.zero_stage=3: use learner=zero2"
        )
    c.check(lr.epochs_per_batch >= 1, "learner.epochs_per_batch", lr.epochs_per_batch, "must be >= 1")
    c.choice("learner.backend", lr.backend, BACKENDS)
    c.check(lr.num_cpus_per_rank > 0, "learner.num_cpus_per_rank", lr.num_cpus_per_rank, "must be > 0")
    c.check(
        cfg.data.prompts_per_step >= 1, "data.prompts_per_step", cfg.data.prompts_per_step, "must be >= 1"
    )
    mini, micro = lr.mini_batch_samples, lr.micro_batch_samples
    c.check(mini >= 1, "learner.mini_batch_samples", mini, "must be >= 1")
    c.check(micro >= 1, "learner.micro_batch_samples", micro, "must be >= 1")
    if mini < 1 or micro < 1 or lr.world_size < 1 or cfg.data.prompts_per_step < 1:
        return
    per_step = cfg.samples_per_step
    if per_step % mini:
        c.fail(
            f"learner.mini_batch_samples={mini} must divide the samples per step data.prompts_per_step × "
            f"rollout.samples_per_prompt = {cfg.data.prompts_per_step} × {cfg.rollout.samples_per_prompt} "
            f"= {per_step}"
        )
    if mini % (micro * lr.world_size):
        c.fail(
            f"learner.micro_batch_samples={micro} × learner.world_size={lr.world_size} = "
            f"{micro * lr.world_size} must divide learner.mini_batch_samples={mini} "
            "(each rank runs whole micro-batches)"
        )
    if lr.backend == "nccl" and cfg.cluster.num_gpus == 0:
        c.fail("learner.backend='nccl' needs GPUs but cluster.num_gpus=0: use learner.backend=gloo or auto")


def _validate_data(c: _Checker, d: DataConfig, check_files: bool) -> None:
    from grpo_lambda.data.templates import PROMPT_TEMPLATES

    c.choice("data.source", d.source, DATA_SOURCES)
    c.choice("data.prompt_template", d.prompt_template, tuple(PROMPT_TEMPLATES))
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
            for i, name in enumerate(names):
                path = resolve_data_file(name, data_dir)
                if not path.is_file():
                    have = sorted(p.name for p in data_dir.glob("*.jsonl")) if data_dir.is_dir() else []
                    where = f"in data.data_dir={str(data_dir)!r}"
                    if not data_dir.is_dir():
                        where = f"({where[3:]} does not exist: set data.data_dir or ${DATA_DIR_ENV})"
                    c.fail(f"{key}[{i}]={name!r} not found {where}{_did_you_mean(name, have)}")
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
            bool(a.ops) and all(op in ARITHMETIC_OPS for op in a.ops),
            "data.arithmetic.ops",
            a.ops,
            f"must be a non-empty list of {', '.join(ARITHMETIC_OPS)}",
        )
        c.choice("data.arithmetic.style", a.style, ARITHMETIC_STYLES)


def _validate_reward(c: _Checker, r: RewardConfig) -> None:
    from grpo_lambda.rewards.verifiers import VERIFIERS

    names = tuple(sorted(VERIFIERS))
    c.choice("reward.verifier", r.verifier, names)
    for name, verifier in r.verifier_by_dataset.items():
        c.choice(f"reward.verifier_by_dataset.{name}", verifier, names)
    c.check(r.correct > r.wrong, "reward.correct", r.correct, f"must be > reward.wrong={r.wrong}")
    c.check(r.num_workers >= 1, "reward.num_workers", r.num_workers, "must be >= 1")
    c.check(r.timeout_s > 0, "reward.timeout_s", r.timeout_s, "must be > 0")
    c.check(r.format_weight >= 0, "reward.format_weight", r.format_weight, "must be >= 0")


def _validate_eval_trainer(c: _Checker, cfg: Config, check_files: bool) -> None:
    e, t = cfg.eval, cfg.trainer
    c.check(e.samples_per_prompt >= 1, "eval.samples_per_prompt", e.samples_per_prompt, "must be >= 1")
    c.check(e.temperature >= 0, "eval.temperature", e.temperature, "must be >= 0 (0 = greedy)")
    c.check(0 < e.top_p <= 1, "eval.top_p", e.top_p, "must be in (0, 1]")
    c.check(
        e.max_response_tokens is None or e.max_response_tokens >= 1,
        "eval.max_response_tokens",
        e.max_response_tokens,
        "must be >= 1 or null",
    )
    c.check(
        e.max_prompts_per_dataset is None or e.max_prompts_per_dataset >= 1,
        "eval.max_prompts_per_dataset",
        e.max_prompts_per_dataset,
        "must be >= 1 or null",
    )
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
    c.check(
        t.eval_every_steps >= 0, "trainer.eval_every_steps", t.eval_every_steps, "must be >= 0 (0 = never)"
    )
    c.check(t.log_every_steps >= 1, "trainer.log_every_steps", t.log_every_steps, "must be >= 1")
    if t.resume not in ("auto", "never") and check_files and not Path(t.resume).expanduser().exists():
        c.fail(f"trainer.resume={t.resume!r} must be 'auto', 'never' or an existing checkpoint path")
    has_eval = bool(cfg.data.eval_files) or (
        cfg.data.source == "arithmetic" and cfg.data.arithmetic.eval_rows > 0
    )
    if (t.eval_every_steps > 0 or t.eval_before_train) and not has_eval:
        c.fail(
            "trainer.eval_every_steps / eval_before_train ask for evaluation but there is no eval set: "
            "set data.eval_files (or data.arithmetic.eval_rows for data=arithmetic)"
        )


def _validate_logger_cluster(c: _Checker, cfg: Config) -> None:
    c.choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    c.check(
        bool(cfg.logger.wandb.project), "logger.wandb.project", cfg.logger.wandb.project, "must be non-empty"
    )
    k = cfg.cluster
    c.choice("cluster.placement", k.placement, PLACEMENTS)
    c.check(k.num_cpus is None or k.num_cpus >= 1, "cluster.num_cpus", k.num_cpus, "must be >= 1 or null")
    c.check(k.num_gpus is None or k.num_gpus >= 0, "cluster.num_gpus", k.num_gpus, "must be >= 0 or null")


def resolve_data_file(name: str, data_dir: str | Path) -> Path:
    """A data file named relative to ``data_dir`` (absolute paths and ``~`` are kept)."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else Path(data_dir).expanduser() / p


# ------------------------------------------------------------------------------------- error messages
def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, [str(x) for x in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _schema_node(full_key: str) -> Any:
    """The dataclass type at the parent of ``full_key`` (``algorithm.lamda`` -> AlgorithmConfig), or None."""
    node: Any = Config
    for part in full_key.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        node = (
            fields[part].default_factory()
            if fields[part].default_factory is not dataclasses.MISSING
            else None
        )
        node = type(node) if dataclasses.is_dataclass(node) else None
    return node


def _unknown_key_message(full_key: str) -> str:
    parent, _, leaf = full_key.rpartition(".")
    node = _schema_node(full_key)
    if node is None:
        return f"unknown key {full_key!r}"
    valid = [f.name for f in dataclasses.fields(node)]
    where = f"'{parent}'" if parent else "the top level"
    hint = _did_you_mean(leaf, valid)
    hint = hint.replace("(did you mean '", f"(did you mean '{parent}." if parent else "(did you mean '")
    return f"unknown key {full_key!r}{hint}; valid keys under {where}: {', '.join(valid)}"


def _explain_omegaconf_error(exc: BaseException) -> str:
    full_key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    msg = str(exc).split("\n")[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and " not in '" in msg:
        return _unknown_key_message(str(full_key))
    if isinstance(exc, MissingMandatoryValue):
        if full_key == "model.path":
            return (
                "model.path is required (???): give the model's local HF folder (no model hub here), "
                "e.g. model.path=/models/Qwen2.5-1.5B-Instruct"
            )
        return f"{full_key} is required but not set (???): set it on the command line, {full_key}=<value>"
    if isinstance(exc, InterpolationResolutionError):
        return f"cannot resolve {full_key}: {msg}"
    if isinstance(exc, ValidationError):
        return f"bad value for {full_key}: {msg}"
    return f"{full_key}: {msg}"


def _explain_compose_error(exc: BaseException) -> str:
    """Turn Hydra's compose exception chain into one line naming the key (with a suggestion)."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    head = str(exc).split("\n")[0]
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            where = f" ({head})" if head.startswith("In '") else ""
            return _explain_omegaconf_error(e) + where
    text = str(exc)
    if "Could not override '" in text:  # e.g. appending to a non-struct node
        key = text.split("Could not override '")[1].split("'")[0]
        return _unknown_key_message(key) + f": {text.splitlines()[-1].strip()}"
    if "Could not find '" in text:  # unknown group option, e.g. learner=zero4
        missing = text.split("Could not find '")[1].split("'")[0]
        listing = text.split("Available options in")[-1].split("Config search path")[0]
        options = [ln.strip() for ln in listing.splitlines() if ln.startswith("\t")]
        group, _, option = missing.rpartition("/")
        return f"no config {missing!r}{_did_you_mean(option, options)}; options for {group!r}: {', '.join(options)}"
    return text.strip()
