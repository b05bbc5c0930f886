"""The GRPO-λ objective: policy loss (ppo | trace | weight) + β·KL(π_θ ‖ π_ref) − entropy bonus, aggregated over
the optimiser mini-batch with global normalisers (see aggregation.py), with the off-policy correction of
`behaviour_is` (is_correction.py) acting on each token's score function:

    log π_θ(o_k)  →  sg(log π_θ(o_k)) + w_k · (log π_θ(o_k) − sg(log π_θ(o_k)))       inside the policy loss

The same values (ratios, trace, clipping, the loss itself are unchanged), and every gradient that reaches
∇log π_θ(o_k) is scaled by token k's own weight w_k. For `ppo` that is exactly the usual ∇(w_t ℓ_t); for a
per-sequence weight (`mis`) the usual ρ ∇ℓ_t; for the ε-trace, whose ℓ_t sends gradient to every k ≤ t, each
earlier token's score carries its own ratio, not token t's (docs/algorithm.md, "Off-policy correction").
Sequences that `mis` / `seq_filter` drop leave the loss and its normalisers."""

from __future__ import annotations

import torch

from .aggregation import aggregate_loss, masked_mean
from .is_correction import behaviour_is_weights
from .kl import kl_penalty
from .loss_config import SEQUENCE_IS, LossConfig
from .policy_loss import POLICY_LOSSES


def _check_shapes(logp, old_logp, advantages, response_mask, ref_logp, entropy, behaviour_logp):
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(logp.shape)}")
    for name, t in (
        ("old_logp", old_logp),
        ("response_mask", response_mask),
        ("ref_logp", ref_logp),
        ("entropy", entropy),
        ("behaviour_logp", behaviour_logp),
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
    behaviour_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the GRPO-λ mini-batch loss, and detached metrics.

    logp, old_logp, ref_logp, entropy: [B, T] response-token tensors; advantages [B] (or [B, T]);
    response_mask [B, T] bool, right-padded. num_tokens / num_seqs: valid tokens / sequences of the whole
    optimiser mini-batch over all micro-batches and ranks (None: this batch's own). horizon: the run's constant H
    (model.max_response_tokens) for `seq-mean-token-sum-norm` and the `horizon` trace anchor; None falls back to
    this batch's width T, which is right only when the batch is padded to H (the learner always passes H).
    behaviour_logp: [B, T] the rollout engine's sampling log-probs log μ; with cfg.behaviour_is != "none" the
    detached weights of is_correction.py scale each token's score in the policy loss (module docstring; the ratio
    and the trace keep old_logp), and `mis` / `seq_filter` drop sequences with ρ > C from the loss. num_tokens
    and num_seqs must then count only the kept sequences (`sequence_keep`; None: this batch's kept ones).
    Ignored when behaviour_is is "none".
    Summing the returned loss over micro-batches and ranks gives the mini-batch loss, so a caller must not
    average it again.
    """
    _check_shapes(logp, old_logp, advantages, response_mask, ref_logp, entropy, behaviour_logp)
    given = response_mask.to(torch.bool)
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    is_weight = None
    if cfg.behaviour_is != "none":  # "none" leaves the loss untouched, bit for bit
        is_weight, keep, is_metrics = behaviour_is_weights(
            old_logp, behaviour_logp, given, cfg.behaviour_is, cfg.behaviour_is_cap
        )
    mask = given & keep[:, None] if cfg.behaviour_is in SEQUENCE_IS else given
    if cfg.behaviour_is in SEQUENCE_IS and num_seqs is None:
        num_seqs = max(int(keep.sum()), 1)

    def valid_only(t: torch.Tensor) -> torch.Tensor:  # padding holds exactly 0: no inf/nan can leak
        return torch.where(mask, t.float(), zero)

    logp = valid_only(logp)
    old_logp = valid_only(old_logp.detach())
    ref_logp = None if ref_logp is None else valid_only(ref_logp.detach())
    entropy = None if entropy is None else valid_only(entropy)
    adv = advantages.detach().float()
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv

    pg_logp = logp
    if is_weight is not None:  # same values, the gradient of each token's score scaled by its own weight
        detached = logp.detach()
        pg_logp = detached + is_weight * (logp - detached)
        metrics = dict(is_metrics)
    else:
        metrics = {}
    token_loss, pg_metrics = POLICY_LOSSES.get(cfg.policy_loss)(
        pg_logp, old_logp, adv, mask, cfg, horizon=horizon
    )
    metrics.update(pg_metrics)
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
    metrics["learner/num_tokens"] = given.sum().detach().float()  # the batch's tokens (metric weights)
    return loss, metrics
