"""Per-token credit: how much of the policy gradient each response token's score receives (docs/credit.md).

With one on-policy update per batch (θ = θ_old, ratio 1, no clip) every policy loss of this package has the
gradient −Â Σ_k c_k ∇log π_θ(o_k): GRPO-λ is GRPO with fixed per-token weights c_k. They are measured, not
re-derived, by differentiating the configured policy loss at θ = θ_old with Â = −1:

    c_k = ∂/∂log π(o_k) Σ_t ℓ_t |_{θ = θ_old, Â = −1}

ppo: c_k = 1. ε-trace: c_k = Σ_{t≥k} w(t, k) (token anchor, `recent`: ≈ min(L − k, 1/(1 − γλ)); the first token of
a long response gets ≈ L, the last 1; with trace_norm=mean they sum to L). ε-weight: c_k = E_k + Σ_{t≥k} w(t,k)
σ′(log π(o_k) − 1), which depends on the log-probs. `credit_metrics` summarises c per step.
"""

from __future__ import annotations

import torch

from .loss_config import LossConfig
from .policy_loss import POLICY_LOSSES

DECILES = 10


def token_credit(
    mask: torch.Tensor, cfg: LossConfig, *, horizon: int | None = None, logp: torch.Tensor | None = None
) -> torch.Tensor:
    """c [B, T] float32 (0 on padding): each token's weight in the policy gradient at θ = θ_old, relative to GRPO's.

    logp: log π_old of the tokens (only ε-weight's c depends on it; None: 0). O(B·T), one backward of the policy
    loss over [B, T] values, never the model."""
    m = mask.to(torch.bool)
    base = (
        torch.zeros(m.shape, dtype=torch.float32, device=m.device) if logp is None else logp.detach().float()
    )
    x = torch.where(m, base, torch.zeros((), device=m.device)).requires_grad_()
    with torch.enable_grad():
        loss, _ = POLICY_LOSSES.get(cfg.policy_loss)(
            x, x.detach(), -torch.ones_like(x), m, cfg, horizon=horizon
        )
        (credit,) = torch.autograd.grad(torch.where(m, loss, torch.zeros((), device=m.device)).sum(), x)
    return torch.where(m, credit, torch.zeros((), device=m.device)).detach()


def _gini(values: torch.Tensor) -> float:
    """Gini coefficient of non-negative values (0: all equal; → 1: one value holds everything)."""
    v, _ = values.sort()
    n = v.numel()
    total = float(v.sum())
    if n < 2 or total <= 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    return float((2 * (ranks * v).sum() / (n * total)) - (n + 1) / n)


def credit_metrics(
    credit: torch.Tensor, mask: torch.Tensor, answer_mask: torch.Tensor | None = None
) -> dict[str, float]:
    """Per-step summaries of c [B, T] over the valid tokens of `mask` (empty rows are left out):

    credit/decile_{i}          mean c of the tokens in the i-th tenth of their response (k·10/L ∈ [i, i+1))
    credit/first_last_ratio    mean over responses of c_first / c_last (GRPO: 1; token-anchored GRPO-λ: ≈ L)
    credit/gini                mean Gini coefficient of c within a response (0 = uniform)
    credit/effective_token_frac  mean (Σ c)² / (L Σ c²): the fraction of tokens that effectively carry weight
    credit/weight_per_token    mean Σ_k c_k / L: what a response weighs per token (GRPO: 1)
    credit/long_short_ratio    weight_per_token of the longer half of the responses / of the shorter half
    credit/answer_share        Σ c on answer tokens / Σ c, beside credit/answer_token_frac (their share of the
                               tokens), over responses with a marked answer (answer_mask [B, T]; else absent)
    """
    m = mask.to(torch.bool)
    c = credit.detach().float()
    lengths = m.sum(-1)
    rows = [b for b in range(m.shape[0]) if lengths[b] > 0]
    out: dict[str, float] = {}
    if not rows:
        return out
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    decile = (positions * DECILES // lengths.clamp(min=1)[:, None]).clamp(max=DECILES - 1)
    for i in range(DECILES):
        sel = m & (decile == i)
        if sel.any():
            out[f"credit/decile_{i}"] = float(c[sel].mean())
    firsts, ginis, effective, per_token = [], [], [], []
    for b in rows:
        cb = c[b, : int(lengths[b])]
        if cb.numel() >= 2 and cb[-1] != 0:
            firsts.append(float(cb[0] / cb[-1]))
        ginis.append(_gini(cb.abs()))
        squares = float((cb * cb).sum())
        effective.append(float(cb.sum()) ** 2 / (cb.numel() * squares) if squares > 0 else 0.0)
        per_token.append(float(cb.sum()) / cb.numel())
    if firsts:
        out["credit/first_last_ratio"] = sum(firsts) / len(firsts)
    out["credit/gini"] = sum(ginis) / len(ginis)
    out["credit/effective_token_frac"] = sum(effective) / len(effective)
    out["credit/weight_per_token"] = sum(per_token) / len(per_token)
    if len(rows) >= 2:
        order = sorted(range(len(rows)), key=lambda i: int(lengths[rows[i]]))
        half = len(order) // 2
        short = sum(per_token[i] for i in order[:half]) / half
        long_ = sum(per_token[i] for i in order[-half:]) / half
        out["credit/long_short_ratio"] = long_ / short if short > 0 else float("nan")
    if answer_mask is not None:
        answered = m & answer_mask.to(torch.bool)
        has_answer = answered.any(-1)
        if has_answer.any():
            in_rows = m & has_answer[:, None]
            out["credit/answer_share"] = float(c[answered].sum() / c[in_rows].sum().clamp(min=1e-12))
            out["credit/answer_token_frac"] = float(answered.sum() / in_rows.sum())
    return out
