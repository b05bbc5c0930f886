"""The λ-trace: eligibility-trace weighting of per-token values (GRPO-λ paper §3–4).

For per-token values x (for ε-trace: x_k = log π_θ(o_k) − log π_old(o_k)) and a = γλ,

    z_t = Σ_{k ≤ t, mask_k} w(t, k) · x_k      for valid t, else 0;   w(t, t) = 1

with, for k < t (token anchor, the paper's definition):

    recent   w = a^(t−k)                 (accumulating eligibility trace, TD(λ) backward view)
    both     w = max(a^(t−k), a^k)       (recent tokens and the start of the response)
    early    w = a^k

The other anchors measure the lag from a fixed end instead of t, so the weights depend on the key k only:

    horizon   a fixed horizon n (the run's max response tokens, veRL's padded response width):
              recent a^(n−1−k),  both max(a^(n−k), a^k),  early a^k
              (the authors' default code path, `use_batch_max_for_trace=True`; with n ≫ the response length
              `recent` sits at the floor, ≈ GRPO, and `both` behaves like `early`)
    sequence  the same formulas with n = L, the response's own length (L − 1 its last valid index):
              recent a^(L−1−k),  both max(a^(L−k), a^k),  early a^k
              (the authors' per-sequence branch, `use_batch_max_for_trace=False`; their exponents as written,
              so `both`'s recent side is a^(L−k), one factor a below `recent`'s a^(L−1−k))

Off-diagonal weights are floored at ``floor`` (authors' code: 1e-7): w ← max(w, floor).

Length-neutral option (``norm="mean"``, `algorithm.trace_norm`): every weight of a sequence is divided by the mean
of its per-token credits c_k = Σ_{t≥k} w(t, k), m = (1/L) Σ_k c_k, so Σ_k c_k / m = L: the trace then only moves
credit between early and late tokens of a response and no longer weights long responses more (with the token
anchor Σ_k c_k grows like L²/2). m depends on the mask and the weights only (no gradient); m = 1 when λ = 0 with
`recent` (that stays GRPO bit for bit).

Cost is O(B·T) memory and never a T×T matrix:
- sequence and horizon anchors: w(t, k) depends on k only, so z = x + exclusive-prefix-sum(v ⊙ x),
  v_k = max(w_k, floor).
- token `early`: the same with v_k = max(a^k, floor).
- token `recent`: the discounted prefix sum r_t = Σ_{k≤t} a^(t−k) x_k (a linear recurrence, computed as a
  chunked matmul: a C×C Toeplitz block inside chunks, plus a second, tiny level across chunk ends).
  A floor reaches lags d ≥ d* (the first lag with a^d < floor):  z_t = r_t − a^(d*) r_{t−d*} + floor · S_{t−d*},
  S the plain prefix sum.
- token `both`: a^(t−k) ≥ a^k exactly when k ≥ t/2, so the lags d = t − k ≤ m = ⌊t/2⌋ come from the recent trace
  truncated at m, r_t − a^(m+1) r_{t−m−1}, and the keys k < ⌈t/2⌉ from the prefix sum of a^k x_k (floors as above).
"""

from __future__ import annotations

import math

import torch

TRACE_STYLES = ("recent", "both", "early")
TRACE_ANCHORS = ("token", "sequence", "horizon")
TRACE_NORMS = ("none", "mean")


def _check_args(
    x: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    style: str,
    anchor: str,
    floor: float,
    horizon: int | None = None,
    norm: str = "none",
):
    if norm not in TRACE_NORMS:
        raise ValueError(f"unknown trace norm {norm!r}; choose one of {list(TRACE_NORMS)}")
    if style not in TRACE_STYLES:
        raise ValueError(f"unknown trace style {style!r}; choose one of {list(TRACE_STYLES)}")
    if anchor not in TRACE_ANCHORS:
        raise ValueError(f"unknown trace anchor {anchor!r}; choose one of {list(TRACE_ANCHORS)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (λ) must be in [0, 1], got {lam}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma (γ) must be in [0, 1], got {gamma}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    if x.dim() != 2:
        raise ValueError(f"x must be [B, T], got shape {tuple(x.shape)}")
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if horizon is not None and horizon < x.shape[-1]:
        raise ValueError(
            f"horizon={horizon} is shorter than the {x.shape[-1]} response positions it must cover"
        )


def _shift_right(y: torch.Tensor, d: int) -> torch.Tensor:
    """y shifted right by d along the last dim with zeros in front: out_t = y_{t−d} (0 for t < d)."""
    if d <= 0:
        return y
    if d >= y.shape[-1]:
        return torch.zeros_like(y)
    return torch.nn.functional.pad(y[..., :-d], (d, 0))


def _gather_lag(y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[:, t] = y[:, index[t]], and 0 where index[t] < 0."""
    valid = index >= 0
    return y[:, index.clamp(min=0)] * valid.to(y.dtype)


def _powers(a: float, exponents: torch.Tensor) -> torch.Tensor:
    """a ** exponents in fp32 for non-negative exponents (0 ** 0 = 1)."""
    return torch.pow(
        torch.tensor(a, dtype=torch.float32, device=exponents.device), exponents.to(torch.float32)
    )


def _toeplitz(a: float, size: int, device: torch.device) -> torch.Tensor:
    """Lower-triangular [size, size] matrix W[i, j] = a^(i−j) for j ≤ i."""
    idx = torch.arange(size, device=device)
    lag = idx[:, None] - idx[None, :]
    return torch.where(lag >= 0, _powers(a, lag.clamp(min=0)), torch.zeros((), device=device))


def discounted_cumsum(x: torch.Tensor, a: float, chunk: int | None = None) -> torch.Tensor:
    """r_t = Σ_{k≤t} a^(t−k) x_k along the last dim of an fp32 [B, T] tensor, i.e. r_t = a·r_{t−1} + x_t.

    Chunked matmul, O(B·T·C) time and O(B·T + C² + (T/C)²) memory with C ≈ √T, differentiable.
    """
    if a == 1.0:
        return x.cumsum(-1)
    if a == 0.0:
        return x.clone()
    batch, horizon = x.shape
    if horizon == 0:
        return x.clone()
    size = chunk or max(16, 1 << math.ceil(math.log2(math.sqrt(horizon))))
    n_chunks = -(-horizon // size)
    xp = torch.nn.functional.pad(x, (0, n_chunks * size - horizon)).view(batch, n_chunks, size)
    local = xp @ _toeplitz(a, size, x.device).T  # within-chunk recurrence            [B, n, C]
    ends = local[..., -1] @ _toeplitz(a**size, n_chunks, x.device).T  # r at each chunk end  [B, n]
    carry = torch.nn.functional.pad(ends[:, :-1], (1, 0))  # r at the previous chunk's end
    decay = _powers(a, torch.arange(1, size + 1, device=x.device))  # a^(i+1) for position i in a chunk
    return (local + carry[..., None] * decay).reshape(batch, -1)[:, :horizon]


def _last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last valid token (−1 for an empty row). [B]"""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(-1)


def _first_lag_below(a: float, floor: float) -> int | None:
    """Smallest lag d ≥ 1 with a^d < floor (None if the floor never binds)."""
    if floor <= 0.0 or a >= 1.0:
        return None
    if a == 0.0:
        return 1
    d = max(1, math.floor(math.log(floor) / math.log(a)))
    while a**d >= floor:
        d += 1
    while d > 1 and a ** (d - 1) < floor:
        d -= 1
    return d


def _per_key_trace(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z_t = x_t + Σ_{k<t} v_k x_k for weights v that depend on the key k only."""
    inclusive = (v * x).cumsum(-1)
    return x + _shift_right(inclusive, 1)


def _token_recent(x: torch.Tensor, a: float, floor: float) -> torch.Tensor:
    r = discounted_cumsum(x, a)
    d_star = _first_lag_below(a, floor)
    if d_star is None:
        return r
    return r - a**d_star * _shift_right(r, d_star) + floor * _shift_right(x.cumsum(-1), d_star)


def _token_both(x: torch.Tensor, a: float, floor: float) -> torch.Tensor:
    horizon = x.shape[-1]
    t = torch.arange(horizon, device=x.device)
    m = t // 2  # lags 0..m come from the recent side, keys k < t − m = ⌈t/2⌉ from the early side
    r = discounted_cumsum(x, a)
    d_star = _first_lag_below(a, floor)
    # recent side, lags d ≤ D = min(m, d*−1) with weight a^d: r_t − a^(D+1) r_{t−D−1}
    big_d = m if d_star is None else torch.clamp(m, max=d_star - 1)
    recent = r - _powers(a, big_d + 1) * _gather_lag(r, t - big_d - 1)
    if d_star is not None:  # lags d* ≤ d ≤ m carry the floor
        prefix = x.cumsum(-1)
        floored = _gather_lag(prefix, t - d_star) - _gather_lag(prefix, t - m - 1)
        recent = recent + floor * floored * (m >= d_star).to(x.dtype)
    v = _powers(a, t)
    if floor > 0.0:
        v = v.clamp(min=floor)
    early = _gather_lag((v * x).cumsum(-1), t - m - 1)  # Σ_{k ≤ ⌈t/2⌉−1} max(a^k, floor) x_k
    return recent + early


def lambda_trace(
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    style: str = "recent",
    anchor: str = "token",
    floor: float = 0.0,
    horizon: int | None = None,
    norm: str = "none",
) -> torch.Tensor:
    """z[b, t] = Σ_{k≤t, mask[b,k]} w(t, k) · x[b, k] where mask[b, t], else 0 (see the module docstring for w);
    with norm="mean" divided by the sequence's mean credit m_b (`trace_mean_weight`).

    x: [B, T] float; mask: [B, T] bool or 0/1, right-padded. Returns z with x's shape and dtype, accumulated
    in fp32 (bf16/fp16 inputs are upcast). Differentiable through x; O(B·T) memory; padding never leaks.
    horizon: n of the `horizon` anchor (>= T; None: T, the padded width), ignored by the other anchors.
    """
    _check_args(x, mask, gamma, lam, style, anchor, floor, horizon, norm)
    valid = mask.to(torch.bool)
    z = _trace(x.to(torch.float32), valid, float(gamma) * float(lam), style, anchor, floor, horizon)
    if norm == "mean":
        z = z / _mean_credit(valid, float(gamma) * float(lam), style, anchor, floor, horizon)[:, None]
    return z.to(x.dtype)


def trace_mean_weight(
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    style: str = "recent",
    anchor: str = "token",
    floor: float = 0.0,
    horizon: int | None = None,
) -> torch.Tensor:
    """m_b = (1/L_b) Σ_{k valid} c_k with c_k = Σ_{t≥k valid} w(t, k): the mean per-token credit of each sequence,
    [B] fp32 (1 for an empty row); what norm="mean" divides by. One trace of a vector of ones: O(B·T)."""
    x = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    _check_args(x, mask, gamma, lam, style, anchor, floor, horizon)
    return _mean_credit(mask.to(torch.bool), float(gamma) * float(lam), style, anchor, floor, horizon)


def _mean_credit(valid, a, style, anchor, floor, horizon) -> torch.Tensor:
    ones = valid.to(torch.float32)
    total = _trace(ones, valid, a, style, anchor, floor, horizon).sum(-1)  # Σ_t Σ_{k≤t} w(t, k) = Σ_k c_k
    length = ones.sum(-1)
    return torch.where(length > 0, total / length.clamp(min=1), torch.ones_like(total))


def _trace(x, valid, a, style, anchor, floor, horizon) -> torch.Tensor:
    """The un-normalised trace in fp32, 0 on padding."""
    xf = torch.where(valid, x, torch.zeros((), dtype=torch.float32, device=x.device))

    if anchor == "token" and style == "recent":
        z = _token_recent(xf, a, floor)
    elif anchor == "token" and style == "both":
        z = _token_both(xf, a, floor)
    else:  # weights that depend on the key k only: token/early and every sequence- or horizon-anchored style
        z = _per_key_trace(xf, _key_weights(valid, a, style, anchor, floor, horizon))
    return torch.where(valid, z, torch.zeros((), dtype=z.dtype, device=z.device))


def _key_weights(
    valid: torch.Tensor, a: float, style: str, anchor: str, floor: float, horizon: int | None
) -> torch.Tensor:
    """v[b, k]: the weight of key k for every later token t (anchors whose lag does not depend on t)."""
    k = torch.arange(valid.shape[-1], device=valid.device)
    early = _powers(a, k).expand(valid.shape)
    if style == "early":
        v = early
    elif anchor == "horizon":
        n = valid.shape[-1] if horizon is None else horizon
        # the authors' exponents, kept exactly: n−1−k for `recent`, n−k for the recent side of `both`
        recent = _powers(a, (n - 1 - k) if style == "recent" else (n - k)).expand(valid.shape)
        v = recent if style == "recent" else torch.maximum(recent, early)
    else:  # token/early was handled above; sequence: the horizon formulas with n = L = last valid index + 1
        last = _last_valid_index(valid)[:, None]  # L − 1
        recent = _powers(a, (last - k if style == "recent" else last + 1 - k).clamp(min=0))
        v = recent if style == "recent" else torch.maximum(recent, early)
    return v.clamp(min=floor) if floor > 0.0 else v


def eligibility_weight(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    style: str = "recent",
    anchor: str = "token",
    floor: float = 0.0,
    horizon: int | None = None,
    norm: str = "none",
    grad: bool = True,
) -> torch.Tensor:
    """ε-weight eligibility E_t = Σ_{k≤t} w(t, k) · (1 + sigmoid(log π_θ(o_k) − 1)) (/ m_b with norm="mean").

    grad=True (the authors' form): differentiable in logp, so a loss E_t·ℓ_t also sends
    ℓ_t Σ_{k≤t} w(t,k) σ′(log π_θ(o_k) − 1) ∇log π_θ(o_k) to the earlier tokens; grad=False: a constant weight."""
    lp = logp.to(torch.float32)
    per_token = 1.0 + torch.sigmoid((lp if grad else lp.detach()) - 1.0)
    return lambda_trace(
        per_token,
        mask,
        gamma=gamma,
        lam=lam,
        style=style,
        anchor=anchor,
        floor=floor,
        horizon=horizon,
        norm=norm,
    )
