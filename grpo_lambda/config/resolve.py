"""Settings whose safe value depends on where the run lands, resolved once at start-up (after Ray, before the
roles start) and written back into the run's `Config`, so config.yaml records what ran.

    gpus = init_ray(cfg); for line in resolve_runtime(cfg, gpus): print(line)

- `rollout.max_staleness: null` → k: 0 on colocated GPUs, 1 on split GPUs and on CPUs (`Config.max_staleness_for`).
- `algorithm.behaviour_is: auto` → `tis` when k ≥ 1 (a batch may have been sampled by weights up to k updates
  older than the learner's θ_old: decoupled PPO needs the correction), `none` when k = 0 (on-policy; λ = 0 with
  `recent` stays GRPO bit for bit).
"""

from __future__ import annotations

from grpo_lambda.algorithms.loss_config import BEHAVIOUR_IS_AUTO

from .schema import Config


def resolve_behaviour_is(mode: str, max_staleness: int) -> str:
    """`algorithm.behaviour_is` with auto resolved for a run whose samples are up to `max_staleness` versions old."""
    if mode != BEHAVIOUR_IS_AUTO:
        return mode
    return "tis" if max_staleness >= 1 else "none"


def resolve_runtime(cfg: Config, gpus: float) -> list[str]:
    """Resolve `rollout.max_staleness` and `algorithm.behaviour_is` in place for a run with `gpus` GPUs per
    actor (0 on CPUs); returns the lines to print at start-up, one per resolved or questionable setting."""
    r, a = cfg.rollout, cfg.algorithm
    where = "CPUs" if gpus == 0 else f"{cfg.cluster.placement} GPUs"
    k = cfg.max_staleness_for(gpus)
    lines = []
    if r.max_staleness is None:
        r.max_staleness = k
        lines.append(f"rollout.max_staleness=null -> {k} on {where}"
                     + (f" (the engines generate up to {k} batch ahead of the learner)" if k else " (synchronous)"))  # fmt: skip
    mode = resolve_behaviour_is(a.behaviour_is, k)
    if a.behaviour_is == BEHAVIOUR_IS_AUTO:
        why = (f"samples may be up to {k} update{'s' * (k > 1)} stale: truncated IS min(pi_old/mu, "
               f"C={a.behaviour_is_cap:g}) per token" if k else "on-policy (max_staleness=0): no correction")  # fmt: skip
        lines.append(f"algorithm.behaviour_is=auto -> {mode} ({why})")
        a.behaviour_is = mode
    elif mode == "none" and k >= 1:
        lines.append(f"WARNING: algorithm.behaviour_is=none with rollout.max_staleness={k}: samples up to {k} "
                     "update(s) stale train as if on-policy (the PPO ratio is 1 at theta_old); set "
                     "algorithm.behaviour_is=auto (tis) to correct them")  # fmt: skip
    return lines
