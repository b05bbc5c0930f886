"""lambda_trace against the dense reference (values and gradients, every style × anchor, floors, ragged masks); the
dense reference itself against a per-element Python loop over the definition."""

from __future__ import annotations

import itertools

import pytest
import torch

from grpo_lambda.algorithms import discounted_cumsum, eligibility_weight, lambda_trace
from grpo_lambda.algorithms.dense_reference import dense_trace_weights

STYLES = ["recent", "both", "early"]
ANCHORS = ["token", "sequence"]


def ref_weight(t: int, k: int, last: int, a: float, style: str, anchor: str, floor: float) -> float:
    """w(t, k) straight from the definition."""
    if k == t:
        return 1.0
    end = t if anchor == "token" else last
    recent, early = a ** (end - k), a**k
    w = {"recent": recent, "early": early, "both": max(recent, early)}[style]
    return max(w, floor)


def loop_matrix(mask: torch.Tensor, a: float, style: str, anchor: str, floor: float) -> torch.Tensor:
    """Dense [B, T, T] float64 weights W[b, t, k] by loops over the definition."""
    batch, horizon = mask.shape
    w = torch.zeros(batch, horizon, horizon, dtype=torch.float64)
    for b in range(batch):
        valid = [i for i in range(horizon) if mask[b, i]]
        last = valid[-1] if valid else -1
        for t in valid:
            for k in valid:
                if k <= t:
                    w[b, t, k] = ref_weight(t, k, last, a, style, anchor, floor)
    return w


def ref_matrix(mask: torch.Tensor, a: float, style: str, anchor: str, floor: float) -> torch.Tensor:
    """The shared dense reference (grpo_lambda.algorithms.dense_reference) with a = γλ."""
    return dense_trace_weights(mask, gamma=1.0, lam=a, style=style, anchor=anchor, floor=floor)


def ragged_mask(batch: int, horizon: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(0, horizon + 1, (batch,), generator=gen)
    lengths[0], lengths[-1] = horizon, 0  # one full row, one empty row
    return torch.arange(horizon)[None, :] < lengths[:, None]


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float):
    scale = expected.abs().max().clamp(min=1.0)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale.item())


@pytest.mark.parametrize("style,anchor", list(itertools.product(STYLES, ANCHORS)))
@pytest.mark.parametrize("a, floor", [(0.99, 0.0), (0.7, 0.05), (0.0, 1e-7), (1.0, 0.0)])
def test_dense_reference_is_the_definition(style, anchor, a, floor):
    gen = torch.Generator().manual_seed(17)
    mask = ragged_mask(4, 23, gen)
    mask[1, 5] = False  # a hole: the sequence anchor uses the last valid token, not the length
    torch.testing.assert_close(ref_matrix(mask, a, style, anchor, floor), loop_matrix(mask, a, style, anchor, floor),
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


def test_eligibility_weight_is_trace_of_sigmoid_and_detached():
    gen = torch.Generator().manual_seed(4)
    mask = ragged_mask(3, 20, gen)
    logp = (-torch.rand(3, 20, generator=gen) * 3).requires_grad_()
    e = eligibility_weight(logp, mask, gamma=1.0, lam=0.9, style="both")
    per = 1 + torch.sigmoid(logp.detach().double() - 1)
    e_ref = torch.einsum("btk,bk->bt", ref_matrix(mask, 0.9, "both", "token", 0.0), per)
    assert_rel_close(e, e_ref, 1e-5)
    assert not e.requires_grad


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
