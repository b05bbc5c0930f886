"""Start-up checks of a run configuration: every rule once, each problem named by its key and what to do.

`validate(cfg)` collects every problem and raises one `ConfigError` listing them all. Allowed names come from the
registries that implement them (advantage estimators, policy losses, KL estimators, aggregations and trace styles
from `grpo_lambda.algorithms`; verifiers, prompt templates, built-in models, arithmetic operators from their
modules) and from the schema's tuples for plain choices, so a new registry entry is valid config at once.
Runtime code does not re-check these values: a component trusts the validated config it is given. Here: the
algorithm, model, rollout, learner and batch sizes; `validation_run`: data, rewards, evaluation, trainer, logging,
cluster.
"""

from __future__ import annotations

from pathlib import Path

from .checker import Checker, ConfigError, did_you_mean
from .schema import (
    ATTN_IMPLEMENTATIONS,
    LEARNER_BACKENDS,
    LR_SCHEDULES,
    MODEL_DTYPES,
    OPTIMIZERS,
    ROLLOUT_DTYPES,
    ROLLOUT_ENGINES,
    STALE_POLICIES,
    SYNC_BACKENDS,
    WEIGHT_SYNCS,
    AlgorithmConfig,
    Config,
    ModelConfig,
)
from .validation_run import check_data, check_eval_trainer, check_logger_cluster, check_reward

__all__ = ["ConfigError", "did_you_mean", "validate"]


def validate(cfg: Config, check_files: bool = True) -> Config:
    """Check values and cross-field rules; raise ConfigError listing every problem with its key.

    `check_files` also checks that data files, model folders and resume paths exist."""
    c = Checker()
    _algorithm(c, cfg.algorithm)
    _model(c, cfg.model, check_files)
    _rollout(c, cfg)
    _learner(c, cfg)
    _batch_sizes(c, cfg)
    check_data(c, cfg.data, check_files)
    check_reward(c, cfg.reward, cfg.data.prompt_template)
    check_eval_trainer(c, cfg, check_files)
    check_logger_cluster(c, cfg)
    if c.errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(c.errors))
    return cfg


def _algorithm(c: Checker, a: AlgorithmConfig) -> None:
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


def _model(c: Checker, m: ModelConfig, check_files: bool) -> None:
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


def _rollout(c: Checker, cfg: Config) -> None:
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


def _learner(c: Checker, cfg: Config) -> None:
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


def _batch_sizes(c: Checker, cfg: Config) -> None:
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
