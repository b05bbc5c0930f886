"""DeepSpeed for the learner: config dict, client optimiser and LR schedule, process-group start-up.

Gradient scaling (why `backward_scale` exists). `grpo_lambda_loss` returns each micro-batch's exact *share* of the
mini-batch loss (global normalisers), so the mini-batch gradient is the plain SUM of the micro-batch gradients over
micro-batches and ranks. DeepSpeed 0.19.8 instead
  (1) divides the loss by gradient_accumulation_steps in `engine.backward` when `scale_wrt_gas=True` (engine.py
      `backward`: `loss / self.gradient_accumulation_steps()`), and
  (2) AVERAGES gradients over the data-parallel ranks (stage 0 `allreduce_bucket`: `mul_(1/dp_world_size)`;
      ZeRO-1/2 `stage_1_and_2.py`: `div_(dp_world_size)`; ZeRO-3 `stage3.py`: `div_(averaging_world_sz)`). The
      config switch `gradient_allreduce_op: "sum"` is rejected with ZeRO-3 (its config.py), so it cannot be the one
      mechanism for every stage.
We undo both explicitly: `engine.backward(loss * dp_world_size, scale_wrt_gas=False)`.
tests/integration/test_learner.py proves it: one mini-batch split over 2 ranks x 2 micro-batches gives, after one
SGD step, the parameters of a single-process full-batch step (and the same pre-clip gradient norm).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from grpo_lambda.compat import skip_deepspeed_shm_comm_build
from grpo_lambda.config.schema import LearnerConfig

# DeepSpeed's TorchBackend JIT-compiles a shared-memory all-reduce op into ~/.cache/torch_extensions/ on first use
# (30-55 s); a process killed mid-build leaves a `lock` file there and every later init_distributed hangs forever.
# We SKIP the build (grpo_lambda.compat.skip_deepspeed_shm_comm_build): the op only speeds up CPU all-reduce, and the
# results are identical with plain gloo. Set GRPO_LAMBDA_DS_SHM_COMM=1 to let DeepSpeed build and use it.
SHM_COMM_ENV = "GRPO_LAMBDA_DS_SHM_COMM"


def backward_scale(dp_world_size: int) -> float:
    """Factor for `engine.backward(loss * f, scale_wrt_gas=False)` that turns DeepSpeed's DP average into a sum."""
    return float(dp_world_size)


def build_ds_config(cfg: LearnerConfig, dtype: str, world_size: int) -> dict:
    """The DeepSpeed config for training (`cfg`: the run's `learner` section; `dtype`: `model.dtype`);
    train_batch_size = micro * gradient_accumulation_steps * world_size (config validation guarantees the
    divisibility; `LearnerWorker` re-programs the sizes if a call uses others).

    No "optimizer"/"scheduler" blocks: the client optimiser (torch AdamW) avoids DeepSpeed's FusedAdam JIT build.
    """
    mini, micro = cfg.mini_batch_samples, cfg.micro_batch_samples
    if (
        cfg.micro_batch_tokens
    ):  # micro-batches of varying size, boundary set by the worker: one "micro" per rank
        micro = mini // world_size
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_batch_size": mini,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": max(1, mini // (micro * world_size)),
        "gradient_clipping": float(cfg.grad_clip),
        "zero_optimization": zero,
        # check_grad_overflow: a non-finite gradient norm skips the step (ZeRO-2 bf16 checks only with it on; it is
        # DeepSpeed 0.19.8's default, stated here so that a changed default cannot drop the skip: docs/faults.md).
        "bf16": {"enabled": dtype == "bfloat16", "check_grad_overflow": True},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        # Keep our torch optimiser under offload too (DeepSpeedCPUAdam would need a JIT build).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }
    if dtype == "bfloat16" and cfg.zero_stage > 0:
        # Accumulate micro-batch gradients in fp32 (bf16 sums of many small shares lose bits). DeepSpeed 0.19.8
        # rejects this mix without ZeRO; ZeRO-0 bf16 keeps fp32 master weights but accumulates in bf16.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def build_inference_ds_config(cfg: LearnerConfig, dtype: str, world_size: int) -> dict:
    """Config for the frozen reference model under ZeRO-3 (parameters partitioned, no optimiser)."""
    micro = cfg.logp_micro
    return {
        "train_batch_size": micro * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": dtype == "bfloat16"},
        "steps_per_print": 1 << 30,
    }


class _Skippable:
    """A torch optimiser whose `step` does nothing while `overflow` is set: the skip of a non-finite step for the
    one optimiser DeepSpeed does not check (ZeRO-0 in fp32, where the engine steps our client optimiser itself;
    every other optimiser DeepSpeed 0.19.8 builds around it, ZeRO-1/2/3 and bf16, skips by itself when the global
    gradient norm is not finite). DeepSpeed's `_take_model_step` reads the same attribute `overflow` of the
    optimiser (DeepSpeed 0.19.8): it then counts the step in `skipped_steps`, reports `was_step_applied()` False
    and leaves the LR schedule where it was, as on the other paths. Set it with `skip_unchecked_step`."""

    overflow = False

    def step(self, closure=None):
        if self.overflow:
            return None
        return super().step(closure)


class SkippableAdamW(_Skippable, torch.optim.AdamW):
    pass


class SkippableSGD(_Skippable, torch.optim.SGD):
    pass


def make_optimizer(model: torch.nn.Module, cfg: LearnerConfig) -> torch.optim.Optimizer:
    """torch AdamW (or plain SGD), able to skip a step (`_Skippable`); weight decay on matrices only, not on biases
    and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}) if g["params"]
    ]
    for g in groups:
        g.setdefault("weight_decay", 0.0)
    if cfg.optimizer == "sgd":
        return SkippableSGD(groups, lr=cfg.lr)
    return SkippableAdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)


class LRFactor:
    """Multiplier of cfg.lr after `step` optimiser steps: 1 (constant) or min(1, (step+1)/warmup) (linear_warmup).

    A callable object rather than a lambda, so LambdaLR can save it in its state_dict.
    """

    def __init__(self, cfg: LearnerConfig):
        self.schedule, self.warmup = cfg.lr_schedule, cfg.warmup_steps

    def __call__(self, step: int) -> float:
        if self.schedule == "linear_warmup" and self.warmup > 0:
            return min(1.0, (step + 1) / self.warmup)
        return 1.0


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: LearnerConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(cfg))


def disable_shm_comm_build() -> bool:
    """Skip DeepSpeed's shared-memory comm op JIT build (see SHM_COMM_ENV above). Returns True if skipped."""
    if os.environ.get(SHM_COMM_ENV, "0") == "1":
        return False
    skip_deepspeed_shm_comm_build()
    return True


def init_distributed(backend: str, timeout_s: float = 600.0) -> None:
    """Join the process group described by MASTER_ADDR/PORT, RANK, WORLD_SIZE (see distributed.rendezvous)."""
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"torch.distributed environment {missing} is not set; start learners through LearnerGroup or set them "
            "from grpo_lambda.distributed.Rendezvous.env(rank)"
        )
    import deepspeed
    import torch.distributed as dist

    from grpo_lambda.distributed.rendezvous import bound_tcp_store

    disable_shm_comm_build()
    if not dist.is_initialized():
        # Our own store first: torch's default one listens on every interface; this one on MASTER_ADDR only
        # (127.0.0.1 on one node). DeepSpeed then finds the group initialised and uses it.
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        timeout = timedelta(seconds=timeout_s)
        store = bound_tcp_store(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0, timeout
        )
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        dist_init_required=None,
    )


def initialize_engine(model: torch.nn.Module, cfg: LearnerConfig, dtype: str, world_size: int):
    """deepspeed.initialize with the client optimiser and LR schedule; returns the engine."""
    import deepspeed

    optimizer = make_optimizer(model, cfg)
    scheduler = make_lr_scheduler(optimizer, cfg)
    config = build_ds_config(cfg, dtype, world_size)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def initialize_inference_engine(model: torch.nn.Module, cfg: LearnerConfig, dtype: str, world_size: int):
    """A ZeRO-3 engine around a frozen model (no optimiser), so the reference model is partitioned too."""
    import deepspeed

    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=build_inference_ds_config(cfg, dtype, world_size))
    engine.eval()
    return engine


def skip_unchecked_step(engine) -> None:
    """Make the coming `engine.step()` a skipped step (ZeRO-0 fp32, see `_Skippable`); undo with
    `end_unchecked_skip` once it ran."""
    if not isinstance(engine.optimizer, _Skippable):
        raise TypeError(
            f"cannot skip a step of {type(engine.optimizer).__name__}: not built by make_optimizer"
        )
    engine.optimizer.overflow = True


def end_unchecked_skip(engine) -> None:
    engine.optimizer.__dict__.pop("overflow", None)


def set_batch_sizes(engine, mini_batch_samples: int, micro_batch_samples: int) -> None:
    """Keep DeepSpeed's bookkeeping in line with this step's sizes (gradient_accumulation_steps, which they
    determine, decides DeepSpeed's accumulation boundary)."""
    if engine.train_micro_batch_size_per_gpu() != micro_batch_samples:
        engine.set_train_micro_batch_size(micro_batch_samples)
    if engine.train_batch_size() != mini_batch_samples:
        engine.set_train_batch_size(mini_batch_samples)


def check_accumulation_boundary(engine, index: int, num_micro: int) -> None:
    """DeepSpeed steps the optimiser at its own accumulation boundary; it must be our last micro-batch."""
    if engine.is_gradient_accumulation_boundary() != (index == num_micro - 1):
        raise RuntimeError(
            f"DeepSpeed's accumulation boundary (gradient_accumulation_steps={engine.gradient_accumulation_steps()}) "
            f"is out of step with micro-batch {index + 1}/{num_micro}: its batch sizes or micro-step counter disagree "
            "with this mini-batch (was a previous train_step interrupted?)"
        )


def default_single_process_env(world_size: int) -> None:
    """A one-rank learner without a launcher: a local rendezvous (MASTER_ADDR, a free port, rank 0 of 1)."""
    if world_size == 1 and "MASTER_ADDR" not in os.environ:
        from grpo_lambda.distributed.rendezvous import Rendezvous, find_free_port

        os.environ.update(Rendezvous("127.0.0.1", find_free_port(), 1).env(0))


def select_device() -> torch.device:
    """The CPU, or this rank's GPU (sets LOCAL_RANK and the current CUDA device)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # Ray gives each actor its own CUDA_VISIBLE_DEVICES: with one visible device it is cuda:0 whatever the
    # node-local rank, and DeepSpeed picks the device from LOCAL_RANK.
    local = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.device_count() > 1 else 0
    os.environ["LOCAL_RANK"] = str(local)
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def any_rank(flag: bool, device: torch.device, world_size: int) -> bool:
    """Whether `flag` is true on any data-parallel rank (an all-reduce; every rank must call it)."""
    import torch.distributed as dist

    if world_size == 1 or not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def reduced_grad_norm(params) -> float:
    """‖g‖₂ of the (already all-reduced) full gradients of `params`; used where DeepSpeed keeps no global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
