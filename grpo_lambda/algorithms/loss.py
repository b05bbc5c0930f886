"""The GRPO-λ objective: policy loss (ppo | trace | weight) + β·KL(π_θ ‖ π_ref) − entropy bonus, aggregated
over the optimiser mini-batch with global normalisers (see aggregation.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .aggregation import AGGREGATIONS, aggregate_loss, masked_mean
from .kl import KL_ESTIMATORS, kl_penalty
from .policy_loss import POLICY_LOSSES
from .traces import TRACE_ANCHORS, TRACE_STYLES


@dataclass(frozen=True)
class LossConfig:
    """Everything the loss needs. Defaults are the paper's GRPO-λ (ε-trace, λ 0.99, γ 1, style both, β 0.001)."""

    policy_loss: str = "trace"  # ppo | trace | weight
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = None
    gamma: float = 1.0
    lam: float = 0.99
    trace_style: str = "both"  # recent | both | early
    trace_anchor: str = "token"  # token | sequence
    trace_floor: float = 0.0
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_coef: float = 0.001
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    max_log_ratio: float = 20.0  # overflow guard on log r and on z before exp

    def __post_init__(self):
        POLICY_LOSSES.get(self.policy_loss)
        KL_ESTIMATORS.get(self.kl_estimator)
        AGGREGATIONS.get(self.loss_agg)
        checks = {
            "trace_style": (self.trace_style in TRACE_STYLES, f"one of {list(TRACE_STYLES)}"),
            "trace_anchor": (self.trace_anchor in TRACE_ANCHORS, f"one of {list(TRACE_ANCHORS)}"),
            "lam": (0.0 <= self.lam <= 1.0, "in [0, 1]"),
            "gamma": (0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            "trace_floor": (0.0 <= self.trace_floor <= 1.0, "in [0, 1]"),
            "clip_eps_low": (0.0 <= self.clip_eps_low < 1.0, "in [0, 1)"),
            "clip_eps_high": (self.clip_eps_high >= 0.0, ">= 0"),
            "dual_clip_c": (self.dual_clip_c is None or self.dual_clip_c > 1.0, "None or > 1"),
            "kl_coef": (self.kl_coef >= 0.0, ">= 0"),
            "max_log_ratio": (self.max_log_ratio > 0.0, "> 0"),
        }
        for key, (ok, want) in checks.items():
            if not ok:
                raise ValueError(f"LossConfig.{key}={getattr(self, key)!r} must be {want}")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_shapes(logp, old_logp, advantages, response_mask, ref_logp, entropy):
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(logp.shape)}")
    for name, t in (
        ("old_logp", old_logp),
        ("response_mask", response_mask),
        ("ref_logp", ref_logp),
        ("entropy", entropy),
    ):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} does not match logp shape {tuple(logp.shape)}")
    if advantages.shape not in ((logp.shape[0],), tuple(logp.shape)):
        raise ValueError(f"advantages must be [B]={logp.shape[0]} or [B, T], got {tuple(advantages.shape)}")


def grpo_lambda_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: LossConfig,
    *,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the GRPO-λ mini-batch loss, and detached metrics.

    logp, old_logp, ref_logp, entropy: [B, T] response-token tensors; advantages [B] (or [B, T]);
    response_mask [B, T] bool, right-padded. num_tokens / num_seqs: valid tokens / sequences of the whole
    optimiser mini-batch over all micro-batches and ranks (None: this batch's own). Summing the returned loss
    over micro-batches and ranks gives the mini-batch loss, so a caller must not average it again.
    """
    _check_shapes(logp, old_logp, advantages, response_mask, ref_logp, entropy)
    mask = response_mask.to(torch.bool)
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)

    def valid_only(t: torch.Tensor) -> torch.Tensor:  # padding holds exactly 0: no inf/nan can leak
        return torch.where(mask, t.float(), zero)

    logp = valid_only(logp)
    old_logp = valid_only(old_logp.detach())
    ref_logp = None if ref_logp is None else valid_only(ref_logp.detach())
    entropy = None if entropy is None else valid_only(entropy)
    adv = advantages.detach().float()
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv

    token_loss, metrics = POLICY_LOSSES.get(cfg.policy_loss)(logp, old_logp, adv, mask, cfg)
    metrics["learner/pg_loss"] = masked_mean(token_loss.detach(), mask)
    metrics["learner/approx_kl"] = masked_mean((old_logp - logp).detach(), mask)

    if cfg.kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError(
                "kl_coef > 0 needs ref_logp (the reference model's log-probs); set kl_coef=0 to drop it"
            )
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)
        token_loss = token_loss + cfg.kl_coef * kl
        metrics["learner/kl"] = masked_mean(kl.detach(), mask)
    if entropy is not None:
        metrics["learner/entropy"] = masked_mean(entropy.detach(), mask)
        if cfg.entropy_coef != 0.0:
            token_loss = token_loss - cfg.entropy_coef * entropy

    token_loss = torch.where(mask, token_loss, zero)
    loss = aggregate_loss(
        token_loss, mask, cfg.loss_agg, num_tokens=num_tokens, num_seqs=num_seqs, horizon=horizon
    )
    metrics["learner/num_tokens"] = mask.sum().detach().float()
    return loss, metrics
