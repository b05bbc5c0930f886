"""The run configuration's schema: one dataclass per section of `conf/`, the single source of every value.

Components take their section (the learner reads `cfg.learner` and `cfg.model`, the loss *is* `cfg.algorithm`,
the tracker takes `cfg.logger`); nothing is copied into a second config class. The schema is registered in
Hydra's ConfigStore as `grpo_lambda_schema` (first in `conf/config.yaml`'s defaults), so an unknown key fails at
compose time with its full path. `validation.py` checks values and cross-field rules; `loading.py` composes.
This module imports neither Hydra nor OmegaConf, so the learner (and the GPU check, whose image lacks them) can
use the sections without them.

Batch sizes carry their unit in the name: `data.prompts_per_step` (prompts), `rollout.samples_per_prompt` (G,
responses per prompt), `learner.mini_batch_samples` (responses per optimiser step, all ranks together) and
`learner.micro_batch_samples` (responses per forward/backward on one learner rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from grpo_lambda.algorithms.loss_config import LossConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = (
    Path(__file__).resolve().parents[1] / "conf"
)  # a symlink to the repository's conf/ (a copy in a wheel)
SCHEMA_NAME = "grpo_lambda_schema"
DATA_DIR_ENV = "GRPO_LAMBDA_DATA_DIR"
MISSING = "???"  # OmegaConf's marker of a required value (omegaconf.MISSING)

# Names users write for values that have no code registry (those that do come from their registries: see
# validation.py). Components import these from here.
MODEL_DTYPES = ("float32", "bfloat16")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
ROLLOUT_DTYPES = ("auto", "float32", "bfloat16", "float16")
ROLLOUT_ENGINES = ("vllm",)
STALE_POLICIES = ("drop", "wait")
WEIGHT_SYNCS = ("broadcast", "object_store")
SYNC_BACKENDS = ("auto", "gloo", "nccl")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "linear_warmup")
LEARNER_BACKENDS = ("auto", "gloo", "nccl")
DATA_SOURCES = ("jsonl", "arithmetic")
WANDB_MODES = ("offline", "online", "disabled")
PLACEMENTS = ("colocated", "split")
ROLES = ("learner", "rollout", "reward")  # the roles cluster.role_resources may pin
RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # asked for by other keys, not pinned
ON_CHECKPOINT_ERROR = ("stop", "warn")
DEFAULT_CONSOLE_KEYS = (
    "reward/mean",
    "learner/loss",
    "learner/kl",
    "learner/clip_frac",
    "learner/grad_norm",
    "response/length_mean",
    "time/step_s",
)


@dataclass
class AlgorithmConfig(LossConfig):
    """GRPO / GRPO-λ: the loss knobs (inherited from `LossConfig`, with the paper's defaults) plus advantages and
    dynamic sampling."""

    name: str = "grpo_lambda"  # label for run names
    # Off-policy correction (LossConfig's field, with the run's safe default): auto = tis when the resolved
    # rollout.max_staleness k >= 1 (samples may be stale), none when k = 0; resolved at start-up (resolve.py)
    behaviour_is: str = "auto"
    adv_estimator: str = "grpo"  # Â_i = (R_i − mean_G R) / (std_G R + adv_eps); dr_grpo: no std; rloo
    adv_eps: float = 1e-6
    neg_adv_clamp: float | None = -0.1  # Â ← max(Â, c); null = off
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
    path: str = MISSING  # local HF folder, or a built-in name (grpo_lambda.models.MODEL_NAMES)
    tokenizer_path: str | None = None  # null = same as path
    dtype: str = "float32"  # learner weights/compute dtype: float32 | bfloat16
    max_prompt_tokens: int = 512
    max_response_tokens: int = 1024
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    attn_implementation: str = (
        "auto"  # learner attention: auto (see learner/model.py) | eager | sdpa | flash_attention_2
    )
    use_chat_template: bool = True


@dataclass
class RolloutConfig:
    engine: str = "vllm"
    num_workers: int = 1  # engines (Ray actors), one vLLM engine each
    samples_per_prompt: int = 8  # G
    temperature: float = 1.0  # also the learner's: log-probs are taken of logits / temperature
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    kv_cache_gib: float = 1.0  # CPU engines: KV-cache size
    gpu_memory_utilization: float = 0.6  # GPU engines
    enforce_eager: bool = True  # no CUDA graphs / compilation: fast start
    dtype: str = "auto"  # auto = model.dtype
    tensor_parallel_size: int = 1
    weight_sync: str = "broadcast"  # broadcast (bucketed, over a gloo/nccl group) | object_store (Ray)
    sync_backend: str = "auto"  # broadcast group: auto = nccl between GPUs in split placement, else gloo
    sync_bucket_mb: float = 256.0  # broadcast bucket size
    sync_check: bool = False  # after each weight sync, read the engines' weights back and require equality
    sync_timeout_s: float = 300.0
    generate_timeout_s: float = (
        1800.0  # deadline of every wait on an engine (generation, start-up); then replaced
    )
    max_engine_restarts: int = 3  # engines replaced (died / missed the deadline) before the run stops
    max_staleness: int | None = (
        None  # k: 0 = synchronous; k >= 1: the engines generate k batches ahead of the learner;
    )
    # null = where the run lands: 0 on colocated GPUs, 1 on split GPUs and CPUs (docs/performance.md)
    stale_policy: str = "drop"  # a group older than k versions: drop (replace it) | wait (regenerate it now)

    def engine_dtype(self, model_dtype: str) -> str:
        """The engines' weight dtype: `dtype`, with auto = the learner's `model.dtype`."""
        return model_dtype if self.dtype == "auto" else self.dtype


@dataclass
class LearnerConfig:
    world_size: int = 2  # DeepSpeed ranks (Ray actors)
    zero_stage: int = 2
    optimizer: str = "adamw"  # adamw | sgd (plain, no momentum: exactness tests, ablations)
    lr: float = 1e-6
    weight_decay: float = 0.0  # on matrices only, not on biases and norm gains
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    lr_schedule: str = "constant"  # constant | linear_warmup (linear from 0 over warmup_steps, then constant)
    warmup_steps: int = 0  # optimiser steps
    mini_batch_samples: int = 64  # responses per optimiser step (all ranks together)
    micro_batch_samples: int = 8  # responses per forward/backward on one rank
    micro_batch_tokens: int | None = (
        None  # instead: a budget of positions per forward on one rank, rows grouped by
    )
    # length (learner/token_budget.py), for training and the log-prob passes; null = micro_batch_samples
    pack_groups: bool = False  # one row per prompt: the prompt once, then its responses (learner/packing.py)
    logp_micro_batch_samples: int | None = (
        None  # responses per log-prob-only forward; null = micro_batch_samples
    )
    epochs_per_batch: int = 1  # passes over each rollout batch (θ_old stays the pre-step policy)
    offload: bool = False  # ZeRO optimizer (and, at stage 3, parameter) offload to CPU
    backend: str = "auto"  # torch.distributed: auto = nccl on GPU, gloo on CPU
    num_cpus_per_rank: float = 1.0

    @property
    def logp_micro(self) -> int:
        return self.logp_micro_batch_samples or self.micro_batch_samples


@dataclass
class ArithmeticConfig:
    """Synthetic integer sums ("What is 12 + 7?") for the CPU demo and tests; see grpo_lambda.data.arithmetic."""

    num_rows: int = 10000
    eval_rows: int = 200  # generated with a different seed; 0 = no eval set
    min_operand: int = 0
    max_operand: int = 20
    num_terms: int = 2
    max_terms: int | None = None  # terms drawn from [num_terms, max_terms]; null = always num_terms
    ops: list[str] = field(default_factory=lambda: ["+", "-"])
    style: str = (
        "expression"  # expression | word | mixed | story (one sentence per step, + and − only) | chain
    )
    hard_step: str = "first"  # style chain: the one hard step (operands from [min, max]) first or last
    easy_max: int = 2  # style chain: the other steps add or subtract 0..easy_max
    eval_seed: int | None = None  # the eval set's seed; null = data.seed + an offset (differs per data.seed)
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
    math_fallback: str = (
        "none"  # math verifier, no \boxed{}: none = unparsable (the authors' grading) | last_number
    )
    # true: every verifier reads only the answer marker data.prompt_template asks for (\boxed{} or "#### x"), no
    # fallback; false: the verifier's own rules (gsm8k: ####, box, "answer is", last number). Paper presets: true
    strict_format: bool = False


@dataclass
class EvalConfig:
    """Evaluation settings, for `python -m grpo_lambda.evaluate` and for evaluation during training."""

    datasets: list[str] = field(
        default_factory=list
    )  # file stems (or paths) in data.data_dir; [] = data.eval_files
    samples_per_prompt: int = 4  # k for avg@k / pass@k / maj@k
    temperature: float = 0.6  # 0 = greedy (then samples_per_prompt must be 1)
    top_p: float = 0.95
    max_response_tokens: int | None = None  # null = model.max_response_tokens
    max_prompts_per_dataset: int | None = None  # null = all (the first N rows of each file)
    output_dir: str | None = None  # evaluate CLI: null = <trainer.output_dir>/eval/<name of model.path>


@dataclass
class TrainerConfig:
    total_steps: int = 100
    seed: int = 0
    output_dir: str = "runs"
    run_name: str = "run"  # run folder = output_dir/run_name; resume=auto continues it
    save_every_steps: int = 50  # 0 = only at the end
    keep_checkpoints: int = 2  # 0 = keep all
    resume: str = "auto"  # auto | never | path to a checkpoint folder
    on_checkpoint_error: str = "stop"  # an unwritable checkpoint: stop | warn (go on); docs/faults.md
    # steps in a row whose every optimiser update is skipped (non-finite loss or gradient) that the run tolerates;
    # the next one stops it. 0 = stop at the first. docs/faults.md
    max_consecutive_skips: int = 3
    eval_every_steps: int = 0  # 0 = never
    eval_before_train: bool = False
    log_every_steps: int = 1  # console line every n steps (the other sinks get every step)
    export_final: bool = True  # at the end: <run>/final/, a Hugging Face folder (grpo_lambda/export.py)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline (files under the run folder; `wandb sync` later) | online | disabled
    project: str = "grpo-lambda"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    console: bool = True  # one line per step
    jsonl: bool = True  # run_dir/metrics.jsonl
    plot: bool = True  # run_dir/reward_curve.png at the end
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
    num_nodes: int | None = None  # joined cluster: wait until this many nodes are alive (null = don't wait)
    join_timeout_s: float = 300.0  # how long to wait for cluster.num_nodes
    placement_timeout_s: float = (
        120.0  # how long a placement that fits the cluster may wait for free resources
    )
    # Custom Ray resources each actor of a role asks for, to pin roles to nodes started with `ray start
    # --resources`: {learner: {...}, rollout: {...}, reward: {...}} (docs/launch.md).
    role_resources: dict[str, dict[str, float]] = field(default_factory=dict)


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

    def max_staleness_for(self, gpus: float) -> int:
        """`rollout.max_staleness`, with null resolved where the run lands: 0 on colocated GPUs (the engines sleep
        while the learner trains: nothing to overlap), 1 on split GPUs and on CPUs (measured in
        docs/performance.md: generation hides behind the update)."""
        k = self.rollout.max_staleness
        if k is not None:
            return k
        return 0 if gpus > 0 and self.cluster.placement == "colocated" else 1

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.output_dir) / self.trainer.run_name


# ------------------------------------------------------------------------------------ where files are
def default_data_dir() -> Path:
    """`$GRPO_LAMBDA_DATA_DIR` if set, else `shared/data` beside the repository checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def resolve_data_file(name: str, data_dir: str | Path) -> Path:
    """A data file named relative to `data_dir` (absolute paths and `~` are kept)."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else Path(data_dir).expanduser() / p
