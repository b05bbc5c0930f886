"""Off-policy correction by the rollout engine's sampling log-probs (`algorithm.behaviour_is`).

The tokens were sampled by the engine's μ (other kernels, bf16, possibly older weights), while the ratio and the
λ-trace use the learner's own π_old. A detached per-token weight w_t corrects for μ ≠ π_old and multiplies the
per-token *policy* loss (not the KL or entropy terms):

    none   w_t = 1
    tis    w_t = min(π_old(o_t) / μ(o_t), C)                       truncated IS, per token
    mis    w_t = 1[ρ ≤ C],  log ρ = Σ_{s valid} (log π_old(o_s) − log μ(o_s))   masked IS, per sequence

C = `algorithm.behaviour_is_cap` (≥ 1). `mis` keeps or drops whole sequences (compared in log space: no overflow).
Padding gets weight 0.
"""

from __future__ import annotations

import math

import torch

from .aggregation import masked_mean
from .loss_config import BEHAVIOUR_IS


def behaviour_is_weights(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor | None,
    mask: torch.Tensor,
    mode: str = "none",
    cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights [B, T] (float32, detached, 0 on padding) and detached metrics.

    old_logp: log π_old [B, T]; behaviour_logp: log μ [B, T] (the engine's sampling log-probs, right-padded);
    mask: [B, T] valid response tokens. Metrics: `learner/is_weight_mean` (over valid tokens),
    `learner/is_weight_max`, `learner/is_truncated_frac` (tis: valid tokens whose raw ratio exceeds C;
    mis: valid tokens of masked sequences).
    """
    if mode not in BEHAVIOUR_IS:
        raise ValueError(f"unknown behaviour_is {mode!r}; choose one of {', '.join(BEHAVIOUR_IS)}")
    if cap < 1:
        raise ValueError(f"behaviour_is_cap must be >= 1, got {cap}")
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=torch.float32, device=m.device)
    if mode == "none":
        weights, truncated = m.float(), torch.zeros_like(m)
    else:
        if behaviour_logp is None:
            raise ValueError(
                f"behaviour_is={mode!r} needs behaviour_logp (the rollout engine's sampling log-probs); "
                "set behaviour_is=none to train without them"
            )
        if behaviour_logp.shape != old_logp.shape or m.shape != old_logp.shape:
            raise ValueError(
                f"behaviour_logp {tuple(behaviour_logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                f"{tuple(m.shape)} must have the same shape"
            )
        log_r = torch.where(m, old_logp.detach().float() - behaviour_logp.detach().float(), zero)
        if mode == "tis":
            ratio = log_r.exp()  # overflow → inf → capped below
            truncated = m & (ratio > cap)
            weights = torch.where(m, ratio.clamp(max=cap), zero)
        else:  # mis
            log_rho = log_r.double().sum(-1)  # float64: long responses sum many small differences
            keep = log_rho <= math.log(cap)
            weights = torch.where(m & keep[:, None], 1.0, zero)
            truncated = m & ~keep[:, None]
    weights = weights.detach()
    valid = weights[m]
    metrics = {
        "learner/is_weight_mean": masked_mean(weights, m),
        "learner/is_weight_max": valid.max() if valid.numel() else zero.clone(),
        "learner/is_truncated_frac": masked_mean(truncated.float(), m),
    }
    return weights, metrics
