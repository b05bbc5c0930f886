"""Loss aggregation over the optimiser mini-batch, invariant to micro-batching and data-parallel splits.

Every mode divides by a *global* normaliser of the whole optimiser batch (passed in), so that the sum of the
micro-batch losses over all micro-batches and ranks is the mini-batch loss — never a mean of means:

    token-mean               Σ_{b,t} m·ℓ / N_tokens                         (DAPO / veRL default)
    seq-mean-token-mean      Σ_b (Σ_t m·ℓ / Σ_t m) / N_seqs                  (original GRPO)
    seq-mean-token-sum       Σ_b Σ_t m·ℓ / N_seqs
    seq-mean-token-sum-norm  Σ_b Σ_t m·ℓ / (N_seqs · H)                      (Dr. GRPO; H a constant horizon)
"""

from __future__ import annotations

import torch

from .registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")


@AGGREGATIONS.register("token-mean")
def token_mean(loss, mask, num_tokens, num_seqs, horizon):
    return (loss * mask).sum() / num_tokens


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss, mask, num_tokens, num_seqs, horizon):
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / num_seqs


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss, mask, num_tokens, num_seqs, horizon):
    return (loss * mask).sum() / num_seqs


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss, mask, num_tokens, num_seqs, horizon):
    return (loss * mask).sum() / (num_seqs * horizon)


def aggregate_loss(
    loss: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    horizon: int | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the mini-batch loss.

    num_tokens / num_seqs: valid tokens / sequences in the whole optimiser mini-batch (all micro-batches, all
    ranks). Left as None they default to this batch's own counts (correct only when it *is* the mini-batch).
    horizon: the constant H of seq-mean-token-sum-norm (the max response length; defaults to T).
    """
    fn = AGGREGATIONS.get(mode)
    mask = response_mask.to(loss.dtype)
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    if num_seqs is None:
        num_seqs = mask.shape[0]
    if horizon is None:
        horizon = mask.shape[-1]
    return fn(loss, mask, num_tokens, num_seqs, horizon)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values over valid positions (0 when there are none)."""
    m = mask.to(torch.bool)
    total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / m.sum().clamp(min=1).to(values.dtype)
