"""Policy losses: GRPO's clipped surrogate and the two GRPO-λ applications of the λ-trace (paper §4).

    ppo     ℓ_t = max(−Â r_t, −Â clip(r_t, 1−ε_low, 1+ε_high)),  r_t = π_θ(o_t)/π_old(o_t)
            (dual clip, Ye et al. 2020: for Â < 0 also ℓ_t ≤ −c·Â with c > 1)
    trace   ε-trace: the same with r_t replaced by ρ_t = exp(z_t), z = lambda_trace(log π_θ − log π_old).
            Gradient flows through log π_θ of every earlier token; at θ = θ_old, ∇ℓ_t = −Â Σ_{k≤t} w(t,k) ∇log π_θ(o_k).
    weight  ε-weight: E_t · ℓ_t^ppo with E_t = Σ_{k≤t} w(t,k)(1 + sigmoid(log π_θ(o_k) − 1)). With
            `eligibility_grad` (default, the authors' code) the gradient flows through E too, adding
            ℓ_t Σ_{k≤t} w(t,k) σ′(·) ∇log π_θ(o_k): the term that sends credit to earlier tokens; without it E only
            rescales each token's own gradient.

Each takes (logp, old_logp, adv, mask, cfg, horizon) — `horizon` is n of the `horizon` trace anchor — and returns
the per-token loss [B, T] (aggregation happens later) and detached metrics.
"""

from __future__ import annotations

import torch

from .aggregation import masked_mean
from .loss_config import LossConfig
from .registry import Registry
from .traces import eligibility_weight, lambda_trace

POLICY_LOSSES: Registry = Registry("policy loss")


def clipped_surrogate(
    log_ratio: torch.Tensor,
    adv: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
    max_log_ratio: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """max(−Â r, −Â clip(r, 1−ε_low, 1+ε_high)) with r = exp(log_ratio) (log_ratio clamped to ±max_log_ratio
    so r cannot overflow). Returns (per-token loss, ratio, clipped indicator)."""
    ratio = log_ratio.clamp(-max_log_ratio, max_log_ratio).exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if dual_clip_c is not None:
        lower = -adv * dual_clip_c
        dual = (adv < 0) & (loss > lower)
        loss = torch.where(adv < 0, torch.minimum(loss, lower), loss)
        is_clipped = is_clipped | dual
    return loss, ratio, is_clipped


def _clip_kwargs(cfg: LossConfig) -> dict:
    return dict(
        eps_low=cfg.clip_eps_low,
        eps_high=cfg.clip_eps_high,
        dual_clip_c=cfg.dual_clip_c,
        max_log_ratio=cfg.max_log_ratio,
    )


def _trace_kwargs(cfg: LossConfig, horizon: int | None) -> dict:
    return dict(gamma=cfg.gamma, lam=cfg.lam, style=cfg.trace_style, anchor=cfg.trace_anchor, floor=cfg.trace_floor,
                horizon=horizon, norm=cfg.trace_norm)  # fmt: skip


def _masked_log_ratio(logp, old_logp, mask):
    return torch.where(mask, logp - old_logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def _ratio_metrics(prefix: str, ratio, is_clipped, mask) -> dict[str, torch.Tensor]:
    m = mask.to(torch.bool)
    big = ratio.detach()[m]
    return {
        f"{prefix}/clip_frac": masked_mean(is_clipped.float(), mask).detach(),
        f"{prefix}/ratio_mean": masked_mean(ratio.detach(), mask),
        f"{prefix}/ratio_max": big.max() if big.numel() else ratio.new_zeros(()),
    }


@POLICY_LOSSES.register("ppo")
def ppo_loss(logp, old_logp, adv, mask, cfg: LossConfig, horizon: int | None = None):
    """GRPO's clipped surrogate (asymmetric clip, optional dual clip)."""
    log_ratio = _masked_log_ratio(logp, old_logp, mask)
    loss, ratio, is_clipped = clipped_surrogate(log_ratio, adv, **_clip_kwargs(cfg))
    metrics = _ratio_metrics("learner", ratio, is_clipped, mask)
    return loss, metrics


@POLICY_LOSSES.register("trace")
def trace_loss(logp, old_logp, adv, mask, cfg: LossConfig, horizon: int | None = None):
    """ε-trace: the clipped surrogate on ρ_t = exp(z_t), z = lambda_trace(log π_θ − log π_old)."""
    log_ratio = _masked_log_ratio(logp, old_logp, mask)
    z = lambda_trace(log_ratio, mask, **_trace_kwargs(cfg, horizon))
    loss, rho, is_clipped = clipped_surrogate(z, adv, **_clip_kwargs(cfg))
    metrics = _ratio_metrics("learner", log_ratio.exp(), is_clipped, mask)
    metrics.update(_ratio_metrics("trace", rho, is_clipped, mask))
    metrics["trace/z_abs_mean"] = masked_mean(z.detach().abs(), mask)
    return loss, metrics


@POLICY_LOSSES.register("weight")
def weight_loss(logp, old_logp, adv, mask, cfg: LossConfig, horizon: int | None = None):
    """ε-weight: the ordinary clipped loss times the eligibility E_t (differentiable with cfg.eligibility_grad)."""
    loss, metrics = ppo_loss(logp, old_logp, adv, mask, cfg)
    weight = eligibility_weight(logp, mask, grad=cfg.eligibility_grad, **_trace_kwargs(cfg, horizon))
    metrics["trace/weight_mean"] = masked_mean(weight.detach(), mask)
    return weight * loss, metrics
