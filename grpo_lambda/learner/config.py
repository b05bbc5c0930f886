"""Learner settings (model, precision, ZeRO, optimiser, schedule, batch sizes), validated at construction.

`LearnerConfig.from_run_config(cfg)` builds one from the run configuration (`grpo_lambda.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPES = ("bf16", "fp32")
DTYPE_ALIASES = {"bfloat16": "bf16", "float32": "fp32", "bf16": "bf16", "fp32": "fp32"}
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "linear_warmup")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LearnerConfig:
    """What every learner rank is built with. Batch sizes are in samples (responses).

    mini_batch_samples: samples per optimiser step, over all ranks. micro_batch_samples: samples per forward/backward
    on one rank. logp_micro_batch_samples: samples per forward when only log-probs are computed (default: micro).
    optimizer "sgd" (plain, no momentum) exists for exactness tests and ablations; "adamw" is the default.
    epochs_per_batch: passes over each rollout batch in one train_step (θ_old stays the pre-step policy).
    offload: ZeRO optimiser state (and at stage 3 parameters) in CPU memory — for GPU machines.
    dtype: "bf16" | "fp32" (also accepted: "bfloat16" | "float32").
    """

    zero_stage: int = 2
    dtype: str = "bf16"
    mini_batch_samples: int = 64
    micro_batch_samples: int = 4
    logp_micro_batch_samples: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    epochs_per_batch: int = 1
    offload: bool = False
    temperature: float = 1.0
    seed: int = 0
    ref_model_path: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = field(default=DEFAULT_LORA_TARGETS)

    def __post_init__(self):
        def bad(key, value, what):
            raise ValueError(f"learner.{key}={value!r}: {what}")

        if self.dtype in DTYPE_ALIASES:
            object.__setattr__(self, "dtype", DTYPE_ALIASES[self.dtype])
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if self.zero_stage not in (0, 1, 2, 3):
            bad("zero_stage", self.zero_stage, "must be 0, 1, 2 or 3")
        if self.dtype not in DTYPES:
            bad("dtype", self.dtype, f"must be one of {sorted(DTYPE_ALIASES)}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"must be one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", self.lr_schedule, f"must be one of {LR_SCHEDULES}")
        if self.lr_schedule == "constant" and self.lr_warmup_steps:
            bad("lr_warmup_steps", self.lr_warmup_steps, "needs lr_schedule=linear_warmup")
        for key in ("mini_batch_samples", "micro_batch_samples", "epochs_per_batch"):
            if getattr(self, key) < 1:
                bad(key, getattr(self, key), "must be >= 1")
        if self.logp_micro_batch_samples is not None and self.logp_micro_batch_samples < 1:
            bad("logp_micro_batch_samples", self.logp_micro_batch_samples, "must be >= 1 or null")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad("adam_betas", self.adam_betas, "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        for key in ("lr", "weight_decay", "lr_warmup_steps"):
            if getattr(self, key) < 0:
                bad(key, getattr(self, key), "must be >= 0")
        if self.offload and self.zero_stage == 0:
            bad("offload", self.offload, "needs zero_stage >= 1 (ZeRO-Offload)")
        if self.grad_clip < 0:
            bad("grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")
        if self.temperature <= 0:
            bad("temperature", self.temperature, "must be > 0 (the rollout sampling temperature)")
        if self.lora_rank < 0:
            bad("lora_rank", self.lora_rank, "must be >= 0 (0 trains all weights)")
        if self.lora_rank and self.zero_stage == 3:
            bad("lora_rank", self.lora_rank, "LoRA is supported with zero_stage 0-2; use zero_stage=2")

    @property
    def logp_micro(self) -> int:
        return self.logp_micro_batch_samples or self.micro_batch_samples

    @classmethod
    def from_run_config(cls, cfg) -> LearnerConfig:
        """From the run configuration (grpo_lambda.config.Config): learner.* (betas -> adam_betas,
        warmup_steps -> lr_warmup_steps), model.dtype, model.gradient_checkpointing, model.lora.*,
        rollout.temperature, trainer.seed."""
        lr, model = cfg.learner, cfg.model
        return cls(
            zero_stage=lr.zero_stage,
            dtype=model.dtype,
            mini_batch_samples=lr.mini_batch_samples,
            micro_batch_samples=lr.micro_batch_samples,
            logp_micro_batch_samples=lr.logp_micro_batch_samples,
            optimizer=lr.optimizer,
            lr=lr.lr,
            weight_decay=lr.weight_decay,
            adam_betas=tuple(lr.betas),
            adam_eps=lr.adam_eps,
            lr_schedule=lr.lr_schedule,
            lr_warmup_steps=lr.warmup_steps,
            grad_clip=lr.grad_clip,
            gradient_checkpointing=model.gradient_checkpointing,
            epochs_per_batch=lr.epochs_per_batch,
            offload=lr.offload,
            temperature=cfg.rollout.temperature,
            seed=cfg.trainer.seed,
            lora_rank=model.lora.rank,
            lora_alpha=model.lora.alpha,
            lora_dropout=model.lora.dropout,
            lora_target_modules=tuple(model.lora.target_modules),
        )
