"""The λ-trace as its definition: an explicit [B, T, T] weight matrix W and z = W x (a bmm).

This is the formulation `lambda_trace` exists to avoid (O(B·T²) memory: gigabytes for 3k-token responses), kept
as the one reference that tests (`tests/unit/test_traces.py`, checked there against a per-element loop), the
benchmark (`scripts/bench_trace.py`, the authors' dense formulation) and the GPU check (`scripts/device_check.py`)
compare against. Never used on the training path.

    W[b, t, k] = 1 if k = t;  max(floor, w(t, k)) if k < t;  0 if k > t;  0 wherever token t or k is padding,

with a = γλ and w(t, k) as written in the paper and the authors' code (traces.py's docstring):

    anchor     recent           both                       early
    token      a^(t−k)          max(a^(t−k), a^k)          a^k
    sequence   a^(L−1−k)        max(a^(L−k), a^k)          a^k      L−1: the row's last valid token (n = L)
    horizon    a^(n−1−k)        max(a^(n−k), a^k)          a^k      n: the fixed horizon
"""

from __future__ import annotations

import torch


def dense_trace_weights(
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    style: str,
    anchor: str = "token",
    floor: float = 0.0,
    horizon: int | None = None,
    norm: str = "none",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """W [B, T, T] in `dtype` for a [B, T] response mask (see the module docstring); `horizon` is n (None: T);
    norm="mean" divides each row b by its mean column sum, (1/L_b) Σ_{t,k} W[b, t, k]."""
    width = mask.shape[-1]
    idx = torch.arange(width, device=mask.device, dtype=dtype)
    a = torch.tensor(gamma * lam, device=mask.device, dtype=dtype)
    k = idx[None, None, :]
    if anchor == "token":
        recent = both_recent = torch.pow(a, (idx[None, :, None] - k).clamp(min=0))  # lag t − k
    elif anchor == "sequence":
        last = (mask.long() * torch.arange(width, device=mask.device)).max(-1).values.to(dtype)[:, None, None]
        recent = torch.pow(a, (last - k).clamp(min=0))  # a^(L−1−k)
        both_recent = torch.pow(a, (last + 1 - k).clamp(min=0))  # a^(L−k): the authors' n − k with n = L
    elif anchor == "horizon":
        n = width if horizon is None else horizon
        recent, both_recent = torch.pow(a, n - 1 - k), torch.pow(a, n - k)  # the authors' exponents
    else:
        raise ValueError(f"unknown trace anchor {anchor!r}")
    early = torch.pow(a, k)
    weights = {"recent": recent, "both": torch.maximum(both_recent, early), "early": early}[style]
    if floor > 0:
        weights = weights.clamp(min=floor)
    diagonal = idx[:, None] == idx[None, :]
    below = idx[:, None] > idx[None, :]
    weights = torch.where(diagonal, torch.ones((), dtype=dtype, device=mask.device), weights * below)
    m = mask.to(dtype)
    weights = weights * m[:, None, :] * m[:, :, None]
    if norm == "mean":
        length = m.sum(-1)
        mean_credit = torch.where(
            length > 0, weights.sum((1, 2)) / length.clamp(min=1), torch.ones_like(length)
        )
        weights = weights / mean_credit[:, None, None]
    return weights


def dense_lambda_trace(
    x: torch.Tensor, mask: torch.Tensor, *, dtype: torch.dtype = torch.float64, **kw
) -> torch.Tensor:
    """z = W x for [B, T] values x, computed in `dtype` (differentiable in x); keyword arguments as
    `dense_trace_weights` (gamma, lam, style, anchor, floor, horizon, norm)."""
    weights = dense_trace_weights(mask, dtype=dtype, **kw)
    return torch.bmm(weights, x.to(dtype).unsqueeze(-1)).squeeze(-1)
