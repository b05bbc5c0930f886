"""lambda_trace against the dense reference (values and gradients, every style × anchor, floors, ragged masks); the
dense reference itself against a per-element Python loop over the definition."""

from __future__ import annotations

import itertools

import pytest
import torch

from grpo_lambda.algorithms import discounted_cumsum, eligibility_weight, lambda_trace, trace_mean_weight
from grpo_lambda.algorithms.dense_reference import dense_trace_weights

STYLES = ["recent", "both", "early"]
ANCHORS = ["token", "sequence", "horizon"]


def ref_weight(t: int, k: int, last: int, a: float, style: str, anchor: str, floor: float, n: int) -> float:
    """w(t, k) straight from the definition (the paper's token anchor, the authors' sequence and horizon ones)."""
    if k == t:
        return 1.0
    if anchor == "horizon":  # the authors' default code path: n − 1 − k for recent, n − k inside both
        recent, recent_in_both = a ** (n - 1 - k), a ** (n - k)
    elif anchor == "sequence":  # their per-sequence branch: the same with n = L (last = L − 1)
        recent, recent_in_both = a ** (last - k), a ** (last + 1 - k)
    else:
        recent = recent_in_both = a ** (t - k)
    early = a**k
    w = {"recent": recent, "early": early, "both": max(recent_in_both, early)}[style]
    return max(w, floor)


def loop_matrix(
    mask: torch.Tensor, a: float, style: str, anchor: str, floor: float, n: int | None = None
) -> torch.Tensor:
    """Dense [B, T, T] float64 weights W[b, t, k] by loops over the definition."""
    batch, horizon = mask.shape
    w = torch.zeros(batch, horizon, horizon, dtype=torch.float64)
    for b in range(batch):
        valid = [i for i in range(horizon) if mask[b, i]]
        last = valid[-1] if valid else -1
        for t in valid:
            for k in valid:
                if k <= t:
                    w[b, t, k] = ref_weight(t, k, last, a, style, anchor, floor, n or horizon)
    return w


def ref_matrix(
    mask: torch.Tensor, a: float, style: str, anchor: str, floor: float, horizon: int | None = None
) -> torch.Tensor:
    """The shared dense reference (grpo_lambda.algorithms.dense_reference) with a = γλ."""
    return dense_trace_weights(
        mask, gamma=1.0, lam=a, style=style, anchor=anchor, floor=floor, horizon=horizon
    )


def ragged_mask(batch: int, horizon: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(0, horizon + 1, (batch,), generator=gen)
    lengths[0], lengths[-1] = horizon, 0  # one full row, one empty row
    return torch.arange(horizon)[None, :] < lengths[:, None]


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float):
    scale = expected.abs().max().clamp(min=1.0)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale.item())


@pytest.mark.parametrize("style,anchor", list(itertools.product(STYLES, ANCHORS)))
@pytest.mark.parametrize("a, floor", [(0.99, 0.0), (0.7, 0.05), (0.0, 1e-7), (1.0, 0.0)])
@pytest.mark.parametrize("n", [None, 40])
def test_dense_reference_is_the_definition(style, anchor, a, floor, n):
    gen = torch.Generator().manual_seed(17)
    mask = ragged_mask(4, 23, gen)
    mask[1, 5] = False  # a hole: the sequence anchor uses the last valid token, not the length
    torch.testing.assert_close(ref_matrix(mask, a, style, anchor, floor, n), loop_matrix(mask, a, style, anchor, floor, n),
                               rtol=1e-12, atol=0)  # fmt: skip


@pytest.mark.parametrize("style,anchor", list(itertools.product(STYLES, ANCHORS)))
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.99), (0.9, 0.7), (1.0, 0.0), (1.0, 1.0), (0.95, 0.5)])
@pytest.mark.parametrize("floor", [0.0, 1e-7, 0.05])
def test_values_and_gradients_match_dense_reference(style, anchor, gamma, lam, floor):
    gen = torch.Generator().manual_seed(hash((style, anchor, gamma, lam, floor)) % 2**31)
    batch, horizon = 5, 61  # 61: four chunks of the chunked scan, a ragged tail
    mask = ragged_mask(batch, horizon, gen)
    x = torch.randn(batch, horizon, generator=gen, requires_grad=True)
    z = lambda_trace(x, mask, gamma=gamma, lam=lam, style=style, anchor=anchor, floor=floor)

    w = ref_matrix(mask, gamma * lam, style, anchor, floor)
    x64 = x.detach().double().requires_grad_()
    z_ref = torch.einsum("btk,bk->bt", w, x64)
    assert_rel_close(z, z_ref, 1e-5)

    upstream = torch.randn(batch, horizon, generator=gen)
    (grad,) = torch.autograd.grad((z * upstream).sum(), x)
    (grad_ref,) = torch.autograd.grad((z_ref * upstream.double()).sum(), x64)
    assert_rel_close(grad, grad_ref, 1e-5)
    assert torch.all(z[~mask] == 0) and torch.all(grad[~mask] == 0)


@pytest.mark.parametrize("style,anchor", list(itertools.product(STYLES, ANCHORS)))
def test_long_sequences_match_reference(style, anchor):
    gen = torch.Generator().manual_seed(7)
    batch, horizon = 2, 520
    mask = torch.ones(batch, horizon, dtype=torch.bool)
    mask[1, 333:] = False
    x = torch.randn(batch, horizon, generator=gen) * 0.1
    z = lambda_trace(x, mask, gamma=1.0, lam=0.99, style=style, anchor=anchor, floor=1e-7)
    z_ref = torch.einsum("btk,bk->bt", ref_matrix(mask, 0.99, style, anchor, 1e-7), x.double())
    assert_rel_close(z, z_ref, 1e-5)


@pytest.mark.parametrize("style,anchor", list(itertools.product(STYLES, ANCHORS)))
def test_padding_values_never_leak(style, anchor):
    gen = torch.Generator().manual_seed(3)
    mask = ragged_mask(4, 33, gen)
    x = torch.randn(4, 33, generator=gen)
    poisoned = x.clone()
    poisoned[~mask] = 1e6
    kw = dict(gamma=1.0, lam=0.9, style=style, anchor=anchor, floor=1e-7)
    torch.testing.assert_close(
        lambda_trace(poisoned, mask, **kw), lambda_trace(x, mask, **kw), rtol=0, atol=0
    )


def test_non_contiguous_mask_token_anchor():
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(3, 40, generator=gen) > 0.3
    x = torch.randn(3, 40, generator=gen)
    for style in STYLES:
        z = lambda_trace(x, mask, gamma=1.0, lam=0.8, style=style)
        z_ref = torch.einsum("btk,bk->bt", ref_matrix(mask, 0.8, style, "token", 0.0), x.double())
        assert_rel_close(z, z_ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("style", STYLES)
def test_low_precision_accumulates_in_fp32(dtype, style):
    gen = torch.Generator().manual_seed(11)
    mask = ragged_mask(3, 300, gen)
    x = (torch.randn(3, 300, generator=gen) * 0.05).to(dtype).requires_grad_()
    z = lambda_trace(x, mask, gamma=1.0, lam=0.99, style=style)
    assert z.dtype == dtype
    z_ref = torch.einsum("btk,bk->bt", ref_matrix(mask, 0.99, style, "token", 0.0), x.detach().double())
    # Output rounding only: an fp32 accumulator keeps the error at one bf16/fp16 ulp of the result.
    ulp = 2**-8 if dtype == torch.bfloat16 else 2**-11
    err = (z.double() - z_ref).abs() / z_ref.abs().clamp(min=1e-2)
    assert err.max() <= ulp
    z.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def test_lambda_zero_recent_is_identity():
    gen = torch.Generator().manual_seed(1)
    mask = ragged_mask(4, 50, gen)
    x = torch.randn(4, 50, generator=gen)
    z = lambda_trace(x, mask, gamma=1.0, lam=0.0, style="recent")
    assert torch.equal(z, torch.where(mask, x, torch.zeros(())))


@pytest.mark.parametrize("a", [0.0, 0.3, 0.99, 1.0])
@pytest.mark.parametrize("chunk", [1, 4, 16, None])
def test_discounted_cumsum_matches_recurrence(a, chunk):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 75, generator=gen)
    expected = torch.zeros(3, 75, dtype=torch.float64)
    run = torch.zeros(3, dtype=torch.float64)
    for t in range(75):
        run = a * run + x[:, t].double()
        expected[:, t] = run
    assert_rel_close(discounted_cumsum(x, a, chunk=chunk), expected, 1e-5)


@pytest.mark.parametrize("anchor", ANCHORS)
def test_eligibility_weight_is_trace_of_sigmoid_with_or_without_its_gradient(anchor):
    """E_t = Σ_k w(t,k)(1 + σ(log π(o_k) − 1)); grad=True (the authors' form) is differentiable in log π, with the
    gradient of the dense float64 form; grad=False is a constant."""
    gen = torch.Generator().manual_seed(4)
    mask = ragged_mask(3, 20, gen)
    logp = (-torch.rand(3, 20, generator=gen) * 3).requires_grad_()
    kw = dict(gamma=1.0, lam=0.9, style="both", anchor=anchor, floor=1e-7, horizon=32)
    e = eligibility_weight(logp, mask, **kw)
    lp64 = logp.detach().double().requires_grad_()
    w = ref_matrix(mask, 0.9, "both", anchor, 1e-7, 32)
    e_ref = torch.einsum("btk,bk->bt", w, 1 + torch.sigmoid(lp64 - 1))
    assert_rel_close(e, e_ref, 1e-5)
    upstream = torch.randn(3, 20, generator=gen)
    (grad,) = torch.autograd.grad((e * upstream).sum(), logp)
    (grad_ref,) = torch.autograd.grad((e_ref * upstream.double()).sum(), lp64)
    assert_rel_close(grad, grad_ref, 1e-5)
    assert grad[~mask].abs().max() == 0 and grad[mask].abs().max() > 0
    constant = eligibility_weight(logp, mask, grad=False, **kw)
    assert not constant.requires_grad and torch.equal(constant, e.detach())


def test_horizon_anchor_defaults_to_the_width_and_must_cover_it():
    gen = torch.Generator().manual_seed(12)
    mask = ragged_mask(3, 30, gen)
    x = torch.randn(3, 30, generator=gen)
    kw = dict(gamma=1.0, lam=0.9, style="both", anchor="horizon")
    assert torch.equal(lambda_trace(x, mask, **kw), lambda_trace(x, mask, horizon=30, **kw))
    assert not torch.equal(lambda_trace(x, mask, **kw), lambda_trace(x, mask, horizon=31, **kw))
    with pytest.raises(ValueError, match="horizon=29 is shorter than the 30 response positions"):
        lambda_trace(x, mask, horizon=29, **kw)


@pytest.mark.parametrize("style", STYLES)
def test_horizon_anchor_with_a_longer_horizon_matches_the_reference(style):
    gen = torch.Generator().manual_seed(14)
    mask = ragged_mask(4, 37, gen)
    x = torch.randn(4, 37, generator=gen, requires_grad=True)
    z = lambda_trace(x, mask, gamma=1.0, lam=0.95, style=style, anchor="horizon", floor=1e-7, horizon=50)
    x64 = x.detach().double().requires_grad_()
    z_ref = torch.einsum("btk,bk->bt", ref_matrix(mask, 0.95, style, "horizon", 1e-7, 50), x64)
    assert_rel_close(z, z_ref, 1e-5)
    (grad,) = torch.autograd.grad(z.sum(), x)
    (grad_ref,) = torch.autograd.grad(z_ref.sum(), x64)
    assert_rel_close(grad, grad_ref, 1e-5)


def test_horizon_anchor_far_beyond_the_response():
    """n = 3072 (the authors' scripts) and a 300-token response: `recent` sits at the floor (the trace adds only
    floor × the prefix sum: ≈ GRPO) and `both` is `early`."""
    gen = torch.Generator().manual_seed(13)
    mask = torch.ones(2, 300, dtype=torch.bool)
    x = torch.randn(2, 300, generator=gen, dtype=torch.float64) * 0.1
    kw = dict(gamma=1.0, lam=0.99, anchor="horizon", floor=1e-7, horizon=3072)
    recent = lambda_trace(x, mask, style="recent", **kw)
    prefix = torch.nn.functional.pad(x.cumsum(-1)[:, :-1], (1, 0))
    torch.testing.assert_close(recent, x + 1e-7 * prefix, rtol=1e-6, atol=1e-9)
    both, early = lambda_trace(x, mask, style="both", **kw), lambda_trace(x, mask, style="early", **kw)
    torch.testing.assert_close(both, early)


# ---------------------------------------------------------------- the length-neutral option (norm="mean")
def loop_mean_credit(mask, a, style, anchor, floor, n=None):
    """m_b = (1/L_b) Σ_k Σ_{t≥k} w(t, k) by loops over the definition."""
    w = loop_matrix(mask, a, style, anchor, floor, n)
    length = mask.sum(-1).double()
    return torch.where(length > 0, w.sum((1, 2)) / length.clamp(min=1), torch.ones_like(length))


@pytest.mark.parametrize("style,anchor", list(itertools.product(STYLES, ANCHORS)))
@pytest.mark.parametrize("a, floor", [(0.99, 0.0), (0.7, 1e-7), (1.0, 0.0)])
def test_mean_norm_matches_the_dense_reference_and_a_loop(style, anchor, a, floor):
    gen = torch.Generator().manual_seed(23)
    mask = ragged_mask(5, 41, gen)
    x = torch.randn(5, 41, generator=gen, requires_grad=True)
    kw = dict(gamma=1.0, lam=a, style=style, anchor=anchor, floor=floor, horizon=50)
    z = lambda_trace(x, mask, norm="mean", **kw)
    m_loop = loop_mean_credit(mask, a, style, anchor, floor, 50)
    torch.testing.assert_close(trace_mean_weight(mask, **kw).double(), m_loop, rtol=1e-5, atol=0)
    w = dense_trace_weights(mask, norm="mean", **kw)
    torch.testing.assert_close(w, loop_matrix(mask, a, style, anchor, floor, 50) / m_loop[:, None, None])
    x64 = x.detach().double().requires_grad_()
    z_ref = torch.einsum("btk,bk->bt", w, x64)
    assert_rel_close(z, z_ref, 1e-5)
    (grad,) = torch.autograd.grad(z.sum(), x)
    (grad_ref,) = torch.autograd.grad(z_ref.sum(), x64)
    assert_rel_close(grad, grad_ref, 1e-5)
    # the credits c_k = Σ_t w(t, k) of every sequence sum to its length: no sequence is weighted by its length
    torch.testing.assert_close(grad_ref.sum(-1), mask.sum(-1).double(), rtol=1e-9, atol=1e-9)


def test_mean_norm_is_the_identity_where_there_is_no_trace():
    """λ = 0 with `recent`: every credit is 1, m = 1 exactly, and the output is bit for bit the un-normalised one."""
    gen = torch.Generator().manual_seed(29)
    mask = ragged_mask(4, 30, gen)
    x = torch.randn(4, 30, generator=gen)
    kw = dict(gamma=1.0, lam=0.0, style="recent")
    assert torch.equal(trace_mean_weight(mask, **kw), torch.ones(4))
    assert torch.equal(lambda_trace(x, mask, norm="mean", **kw), lambda_trace(x, mask, **kw))
    with pytest.raises(ValueError, match="unknown trace norm 'sum'"):
        lambda_trace(x, mask, norm="sum", **kw)


def authors_sequence_weight(t: int, k: int, length: int, a: float, style: str) -> float:
    """The authors' per-sequence branch (`use_batch_max_for_trace=False`) written out per element: their horizon
    formulas with n = L, the response's length — recent a^(n−1−k), both max(a^(n−k), a^k), early a^k for k < t."""
    n = length
    if k == t:
        return 1.0
    return {"recent": a ** (n - 1 - k), "both": max(a ** (n - k), a**k), "early": a**k}[style]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("a, lengths", [(0.9, (7, 3, 1)), (0.5, (12, 11, 2)), (0.99, (40, 17, 33))])
def test_sequence_anchor_is_the_authors_formula(style, a, lengths):
    """Held-out cases (not the shared reference's own loops): one response per length, right-padded to width 41."""
    mask = torch.arange(41)[None, :] < torch.tensor(lengths)[:, None]
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(len(lengths), 41, generator=gen, dtype=torch.float64)
    z = lambda_trace(x, mask, gamma=1.0, lam=a, style=style, anchor="sequence")
    expected = torch.zeros_like(x)
    for b, length in enumerate(lengths):
        for t in range(length):
            expected[b, t] = sum(
                authors_sequence_weight(t, k, length, a, style) * x[b, k] for k in range(t + 1)
            )
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-6)  # lambda_trace accumulates in fp32
    weights = dense_trace_weights(mask, gamma=1.0, lam=a, style=style, anchor="sequence")
    for b, length in enumerate(lengths):
        for t, k in itertools.product(range(length), repeat=2):
            if k <= t:
                assert weights[b, t, k].item() == pytest.approx(
                    authors_sequence_weight(t, k, length, a, style)
                )


def test_sequence_anchor_both_uses_the_authors_exponent():
    """a = 0.9, L = 7: w(6, 4) = max(a^(L−4), a^4) = 0.729 (not a^(L−1−4) = 0.81)."""
    w = dense_trace_weights(
        torch.ones(1, 7, dtype=torch.bool), gamma=1.0, lam=0.9, style="both", anchor="sequence"
    )
    assert w[0, 6, 4].item() == pytest.approx(0.729)
    x = torch.zeros(1, 7, dtype=torch.float64)
    x[0, 4] = 1.0
    z = lambda_trace(
        x, torch.ones(1, 7, dtype=torch.bool), gamma=1.0, lam=0.9, style="both", anchor="sequence"
    )
    assert z[0, 6].item() == pytest.approx(0.729)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(style="late"), "trace style"),
        (dict(anchor="prompt"), "trace anchor"),
        (dict(lam=1.5), "lam"),
        (dict(lam=-0.1), "lam"),
        (dict(gamma=2.0), "gamma"),
        (dict(floor=-1.0), "floor"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    x, mask = torch.zeros(2, 5), torch.ones(2, 5, dtype=torch.bool)
    args = dict(gamma=1.0, lam=0.9) | kwargs
    with pytest.raises(ValueError, match=match):
        lambda_trace(x, mask, **args)


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        lambda_trace(torch.zeros(2, 5), torch.ones(2, 6), gamma=1.0, lam=0.9)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        lambda_trace(torch.zeros(5), torch.ones(5), gamma=1.0, lam=0.9)
    with pytest.raises(ValueError, match="floating"):
        lambda_trace(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5), gamma=1.0, lam=0.9)


def test_mask_accepts_bool_and_int():
    x = torch.randn(2, 9)
    m = torch.tensor([[1] * 9, [1] * 4 + [0] * 5])
    a = lambda_trace(x, m, gamma=1.0, lam=0.9, style="both")
    b = lambda_trace(x, m.bool(), gamma=1.0, lam=0.9, style="both")
    assert torch.equal(a, b)
