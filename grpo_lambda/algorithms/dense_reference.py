"""The λ-trace as its definition: an explicit [B, T, T] weight matrix W and z = W x (a bmm).

This is the formulation `lambda_trace` exists to avoid (O(B·T²) memory: gigabytes for 3k-token responses), kept
as the one reference that tests (`tests/unit/test_traces.py`, checked there against a per-element loop), the
benchmark (`scripts/bench_trace.py`, the authors' dense formulation) and the GPU check (`scripts/device_check.py`)
compare against. Never used on the training path.

    W[b, t, k] = 1 if k = t;  w(t, k) (traces.py's styles and anchors, floored) if k < t;  0 if k > t,
    and 0 wherever token t or k of row b is padding.
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
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """W [B, T, T] in `dtype` for a [B, T] response mask (see the module docstring)."""
    batch, horizon = mask.shape
    idx = torch.arange(horizon, device=mask.device, dtype=dtype)
    a = torch.tensor(gamma * lam, device=mask.device, dtype=dtype)
    if anchor == "token":
        end = idx[None, :, None]  # [1, T, 1]: the lag is measured from t
    elif anchor == "sequence":
        last = (mask.long() * torch.arange(horizon, device=mask.device)).max(-1).values.to(dtype)
        end = last[:, None, None]  # [B, 1, 1]: from the row's last valid token
    else:
        raise ValueError(f"unknown trace anchor {anchor!r}")
    lag = (end - idx[None, None, :]).clamp(min=0)
    recent = torch.pow(a, lag)
    early = torch.pow(a, idx)[None, None, :]
    weights = {"recent": recent, "early": early.expand_as(recent), "both": torch.maximum(recent, early)}[
        style
    ]
    if floor > 0:
        weights = weights.clamp(min=floor)
    diagonal = idx[:, None] == idx[None, :]
    below = idx[:, None] > idx[None, :]
    weights = torch.where(diagonal, torch.ones((), dtype=dtype, device=mask.device), weights * below)
    m = mask.to(dtype)
    return weights * m[:, None, :] * m[:, :, None]


def dense_lambda_trace(
    x: torch.Tensor, mask: torch.Tensor, *, dtype: torch.dtype = torch.float64, **kw
) -> torch.Tensor:
    """z = W x for [B, T] values x, computed in `dtype` (differentiable in x); keyword arguments as
    `dense_trace_weights` (gamma, lam, style, anchor, floor)."""
    weights = dense_trace_weights(mask, dtype=dtype, **kw)
    return torch.bmm(weights, x.to(dtype).unsqueeze(-1)).squeeze(-1)
