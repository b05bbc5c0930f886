"""Off-policy correction by the rollout engine's sampling log-probs (`algorithm.behaviour_is`).

The tokens were sampled by the engine's μ (other kernels, bf16, possibly older weights), while the ratio and the
λ-trace use the learner's own π_old (the proximal policy of decoupled PPO). A detached weight corrects for
μ ≠ π_old; r_t = π_old(o_t) / μ(o_t), log ρ = Σ_{s valid} log r_s (the sequence ratio, in float64 log space):

    none        w_t = 1
    tis         w_t = min(r_t, C)                                  truncated IS, per token
    mis         w_t = ρ if ρ ≤ C, else the sequence is dropped      masked IS, per sequence (Yao et al.; TRL's
                                                                    `sequence_mask`)
    seq_filter  w_t = 1 if ρ ≤ C, else the sequence is dropped      a keep-or-drop filter, not an IS estimator

C = `algorithm.behaviour_is_cap` (≥ 1). A dropped sequence leaves the loss entirely: its policy, KL and entropy
terms and its tokens and sequence in the mini-batch normalisers (`sequence_keep` on the driver and in the loss).
How w enters the loss (on each token's score function) is loss.py's; padding gets weight 0.
"""

from __future__ import annotations

import math

import torch

from .aggregation import masked_mean
from .loss_config import BEHAVIOUR_IS, SEQUENCE_IS

__all__ = ["behaviour_is_weights", "sequence_keep", "sequence_log_ratio"]


def _check(mode: str, cap: float, old_logp, behaviour_logp, mask) -> None:
    if mode not in BEHAVIOUR_IS:
        hint = " ('auto' is resolved at start-up: config.resolve_runtime)" if mode == "auto" else ""
        raise ValueError(f"unknown behaviour_is {mode!r}; choose one of {', '.join(BEHAVIOUR_IS)}{hint}")
    if cap < 1:
        raise ValueError(f"behaviour_is_cap must be >= 1, got {cap}")
    if mode == "none":
        return
    if behaviour_logp is None:
        raise ValueError(
            f"behaviour_is={mode!r} needs behaviour_logp (the rollout engine's sampling log-probs); "
            "set behaviour_is=none to train without them"
        )
    if behaviour_logp.shape != old_logp.shape or mask.shape != old_logp.shape:
        raise ValueError(
            f"behaviour_logp {tuple(behaviour_logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )


def sequence_log_ratio(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log ρ_b = Σ_{t valid} (log π_old − log μ)(o_t), [B] float64 (long responses sum many small differences)."""
    m = mask.to(torch.bool)
    diff = old_logp.detach().double() - behaviour_logp.detach().double()
    return torch.where(m, diff, torch.zeros((), dtype=torch.float64, device=m.device)).sum(-1)


def sequence_keep(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor | None, mask: torch.Tensor, mode: str, cap: float
) -> torch.Tensor:
    """[B] bool: the sequences that stay in the loss — all of them unless `mode` drops sequences (`mis`,
    `seq_filter`), which keep those with ρ ≤ C. The driver counts the normalisers with it, the loss applies it."""
    _check(mode, cap, old_logp, behaviour_logp, mask)
    if mode not in SEQUENCE_IS:
        return torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    return _kept(sequence_log_ratio(old_logp, behaviour_logp, mask), cap)


def _kept(log_rho: torch.Tensor, cap: float) -> torch.Tensor:
    """ρ ≤ C, compared in log space (no overflow): the one rule the driver's counts and the loss share."""
    return log_rho <= math.log(cap)


def behaviour_is_weights(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor | None,
    mask: torch.Tensor,
    mode: str = "none",
    cap: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(weights [B, T] float32, keep [B] bool, metrics), all detached; weights are 0 on padding and on dropped
    sequences.

    old_logp: log π_old [B, T]; behaviour_logp: log μ [B, T] (the engine's sampling log-probs, right-padded);
    mask: [B, T] valid response tokens. Metrics, over the valid tokens of the batch as given:
    `learner/is_weight_mean`, `learner/is_weight_max`, `learner/is_truncated_frac` (tis: tokens whose r_t
    exceeds C; mis / seq_filter: tokens of dropped sequences).
    """
    _check(mode, cap, old_logp, behaviour_logp, mask)
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=torch.float32, device=m.device)
    keep = torch.ones(m.shape[0], dtype=torch.bool, device=m.device)
    if mode == "none":
        weights, truncated = m.float(), torch.zeros_like(m)
    elif mode == "tis":
        log_r = torch.where(m, old_logp.detach().float() - behaviour_logp.detach().float(), zero)
        ratio = log_r.exp()  # overflow → inf → capped below
        truncated = m & (ratio > cap)
        weights = torch.where(m, ratio.clamp(max=cap), zero)
    else:  # mis, seq_filter: one weight per sequence
        log_rho = sequence_log_ratio(old_logp, behaviour_logp, m)
        keep = _kept(log_rho, cap)
        rho = log_rho.clamp(max=math.log(cap)).exp().float()
        per_seq = torch.where(keep, rho if mode == "mis" else torch.ones_like(rho), zero)
        weights = torch.where(m, per_seq[:, None], zero)
        truncated = m & ~keep[:, None]
    weights = weights.detach()
    valid = weights[m]
    metrics = {
        "learner/is_weight_mean": masked_mean(weights, m),
        "learner/is_weight_max": valid.max() if valid.numel() else zero.clone(),
        "learner/is_truncated_frac": masked_mean(truncated.float(), m),
    }
    return weights, keep, metrics
