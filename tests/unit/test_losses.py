"""Advantages, policy losses, KL, aggregation and the composed GRPO-λ loss against loop references and properties."""

from __future__ import annotations

import math

import pytest
import torch
from test_traces import ragged_mask, ref_matrix

from grpo_lambda.algorithms import (
    AGGREGATIONS,
    LossConfig,
    compute_advantages,
    entropy_from_logits,
    grpo_lambda_loss,
    kl_penalty,
    token_logp_from_logits,
)
from grpo_lambda.algorithms.dense_reference import dense_trace_weights


def make_batch(seed=0, batch=6, horizon=23):
    gen = torch.Generator().manual_seed(seed)
    mask = ragged_mask(batch, horizon, gen)
    mask[-1, :3] = True  # no empty rows here
    old = -torch.rand(batch, horizon, generator=gen) * 2
    logp = (old + 0.1 * torch.randn(batch, horizon, generator=gen)).requires_grad_()
    ref = old + 0.05 * torch.randn(batch, horizon, generator=gen)
    adv = torch.randn(batch, generator=gen)
    return logp, old, ref, adv, mask


# ---------------------------------------------------------------- advantages
@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_advantages_match_loops(estimator):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0])
    got = compute_advantages(rewards, 4, estimator=estimator)
    expected = []
    for g in range(3):
        r = rewards[4 * g : 4 * g + 4].tolist()
        mean = sum(r) / 4
        std = math.sqrt(sum((v - mean) ** 2 for v in r) / 3)
        for v in r:
            if estimator == "grpo":
                expected.append((v - mean) / (std + 1e-6))
            elif estimator == "dr_grpo":
                expected.append(v - mean)
            else:
                expected.append(v - (sum(r) - v) / 3)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_advantage_negative_clamp_and_errors():
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, neg_clamp=-0.1)
    assert adv.min().item() == pytest.approx(-0.1) and adv.max().item() > 1
    with pytest.raises(ValueError, match="groups of group_size=3"):
        compute_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        compute_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'"):
        compute_advantages(torch.zeros(4), 2, estimator="gae")
    with pytest.raises(ValueError, match="neg_clamp"):
        compute_advantages(torch.zeros(4), 2, neg_clamp=0.5)


# ---------------------------------------------------------------- policy losses
def ref_ppo_token(lp, olp, a, el, eh, c):
    r = math.exp(lp - olp)
    loss = max(-a * r, -a * min(max(r, 1 - el), 1 + eh))
    if c is not None and a < 0:
        loss = min(loss, -c * a)
    return loss


@pytest.mark.parametrize("dual_clip_c", [None, 3.0])
def test_ppo_loss_matches_loop(dual_clip_c):
    logp, old, _, adv, mask = make_batch(1)
    logp = (old + 0.5 * torch.randn_like(old)).requires_grad_()  # large moves: both clip sides active
    cfg = LossConfig(
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=dual_clip_c, kl_coef=0.0
    )
    loss, metrics = grpo_lambda_loss(logp, old, adv, mask, cfg)
    total, n = 0.0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                total += ref_ppo_token(
                    logp[b, t].item(), old[b, t].item(), adv[b].item(), 0.2, 0.28, dual_clip_c
                )
                n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert 0 < metrics["learner/clip_frac"].item() < 1


@pytest.mark.parametrize("norm", ["none", "mean"])
def test_lambda_zero_recent_trace_is_grpo_exactly(norm):
    logp, old, ref, adv, mask = make_batch(2)
    grads = {}
    for name, cfg in {
        "ppo": LossConfig(policy_loss="ppo", kl_coef=0.001),
        "trace": LossConfig(
            policy_loss="trace", lam=0.0, trace_style="recent", kl_coef=0.001, trace_norm=norm
        ),
    }.items():
        loss, _ = grpo_lambda_loss(logp, old, adv, mask, cfg, ref_logp=ref)
        (g,) = torch.autograd.grad(loss, logp)
        grads[name] = (loss.detach(), g)
    assert torch.equal(grads["ppo"][0], grads["trace"][0])
    assert torch.equal(grads["ppo"][1], grads["trace"][1])


@pytest.mark.parametrize("style", ["recent", "both", "early"])
@pytest.mark.parametrize("anchor", ["token", "sequence", "horizon"])
@pytest.mark.parametrize("norm", ["none", "mean"])
def test_trace_gradient_at_theta_old_is_eligibility_trace(style, anchor, norm):
    """At θ = θ_old: ∇ loss = −(1/N) Σ_{b,t} Â_b Σ_{k≤t} w(t,k) ∇log π_θ(o_k), through a real parameterisation
    (norm="mean": w / m_b, each sequence's credits summing to its length)."""
    gen = torch.Generator().manual_seed(9)
    batch, horizon, vocab, dim = 4, 17, 11, 5
    mask = ragged_mask(batch, horizon, gen)
    mask[-1, :2] = True
    hidden = torch.randn(batch, horizon, dim, generator=gen)
    tokens = torch.randint(0, vocab, (batch, horizon), generator=gen)
    weight = torch.randn(dim, vocab, generator=gen, requires_grad=True)
    adv = torch.randn(batch, generator=gen)

    def logp_of(w):
        return token_logp_from_logits(hidden @ w, tokens)

    logp = logp_of(weight)
    cfg = LossConfig(
        policy_loss="trace",
        lam=0.9,
        gamma=1.0,
        trace_style=style,
        trace_anchor=anchor,
        kl_coef=0.0,
        trace_norm=norm,
    )
    loss, _ = grpo_lambda_loss(logp, logp.detach(), adv, mask, cfg)
    (got,) = torch.autograd.grad(loss, weight)

    w = dense_trace_weights(mask, gamma=1.0, lam=0.9, style=style, anchor=anchor, norm=norm)  # [B, T, K]
    coeff = (adv.double()[:, None, None] * w).sum(1)  # Σ_t Â_b w(t, k) → [B, K]
    weight64 = weight.detach().double().requires_grad_()
    logp64 = token_logp_from_logits(hidden.double() @ weight64, tokens)
    (expected,) = torch.autograd.grad(-(coeff * logp64).sum() / mask.sum(), weight64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


def test_weight_loss_is_eligibility_times_ppo():
    logp, old, _, adv, mask = make_batch(3)
    cfg = LossConfig(
        policy_loss="weight", lam=0.9, trace_style="recent", kl_coef=0.0, loss_agg="seq-mean-token-sum"
    )
    loss, metrics = grpo_lambda_loss(logp, old, adv, mask, cfg)
    w = ref_matrix(mask, 0.9, "recent", "token", 0.0)
    e = torch.einsum("btk,bk->bt", w, 1 + torch.sigmoid(logp.detach().double() - 1))
    total = 0.0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                total += e[b, t].item() * ref_ppo_token(
                    logp[b, t].item(), old[b, t].item(), adv[b].item(), 0.2, 0.2, None
                )
    assert loss.item() == pytest.approx(total / mask.shape[0], rel=1e-5)
    assert metrics["trace/weight_mean"].item() > 1


def dense_weight_loss(logp, old, adv, mask, style, anchor, floor, horizon, eligibility_grad, eps=0.2):
    """The ε-weight loss in float64 straight from the authors' formulas: per token
    E_t · max(−Â r_t, −Â clip(r_t, 1−ε, 1+ε)), E_t = Σ_k w(t,k)(1 + σ(log π_θ(o_k) − 1)), E differentiable unless
    `eligibility_grad` is off; summed over valid tokens and divided by the token count (token-mean)."""
    w = ref_matrix(mask, 0.9, style, anchor, floor, horizon)
    lp_e = logp if eligibility_grad else logp.detach()
    e = torch.einsum("btk,bk->bt", w, 1 + torch.sigmoid(lp_e - 1))
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    ppo = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps))
    return torch.where(mask, e * ppo, torch.zeros((), dtype=logp.dtype)).sum() / mask.sum()


@pytest.mark.parametrize("eligibility_grad", [True, False])
@pytest.mark.parametrize(
    "style, anchor", [("recent", "token"), ("both", "token"), ("both", "horizon"), ("recent", "sequence")]
)
def test_weight_loss_gradient_through_the_eligibility(eligibility_grad, style, anchor):
    """ε-weight against its dense float64 form, values and gradients: with `eligibility_grad` (the default, the
    authors' code) the gradient has the extra term Σ_k w(t,k) σ′ ∇log π(o_k) that reaches earlier tokens."""
    logp, old, _, adv, mask = make_batch(11, horizon=29)
    cfg = LossConfig(policy_loss="weight", lam=0.9, trace_style=style, trace_anchor=anchor, trace_floor=1e-7,
                     kl_coef=0.0, eligibility_grad=eligibility_grad)  # fmt: skip
    loss, _ = grpo_lambda_loss(logp, old, adv, mask, cfg, horizon=40)
    (grad,) = torch.autograd.grad(loss, logp)
    lp64 = logp.detach().double().requires_grad_()
    ref = dense_weight_loss(lp64, old.double(), adv.double(), mask, style, anchor, 1e-7, 40, eligibility_grad)
    (grad_ref,) = torch.autograd.grad(ref, lp64)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-7)
    other = dense_weight_loss(
        lp64, old.double(), adv.double(), mask, style, anchor, 1e-7, 40, not eligibility_grad
    )
    (grad_other,) = torch.autograd.grad(other, lp64)
    assert (grad_other - grad_ref).abs().max() > 1e-3  # the two forms really differ


MICRO_CASES = [("ppo", "token", "none")] + [
    (loss, anchor, norm)
    for loss in ("trace", "weight")
    for anchor in ("token", "sequence", "horizon")
    for norm in ("none", "mean")
]


@pytest.mark.parametrize("policy_loss, anchor, norm", MICRO_CASES)
@pytest.mark.parametrize("agg", AGGREGATIONS.names())
def test_micro_batches_sum_to_the_mini_batch(policy_loss, agg, anchor, norm):
    """token-mean (and every mode) over a batch = Σ over its micro-batches given the global counts, for every trace
    anchor (sequence: each row's own length; horizon: the run's one H, whatever a micro-batch's width) and
    trace_norm (each sequence's own mean credit)."""
    logp, old, ref, adv, mask = make_batch(4, batch=8, horizon=19)
    cfg = LossConfig(policy_loss=policy_loss, loss_agg=agg, kl_coef=0.01, lam=0.95, trace_anchor=anchor,
                     trace_norm=norm)  # fmt: skip
    full, _ = grpo_lambda_loss(logp, old, adv, mask, cfg, ref_logp=ref, horizon=19)
    (g_full,) = torch.autograd.grad(full, logp)
    n_tok, n_seq = mask.sum().item(), mask.shape[0]
    parts, g_parts = [], torch.zeros_like(logp)
    for idx in (slice(0, 3), slice(3, 4), slice(4, 8)):  # uneven micro-batches, different padding
        lp = logp[idx].detach().requires_grad_()
        width = int(mask[idx].sum(-1).max().clamp(min=1))  # each micro-batch trimmed to its own length
        part, _ = grpo_lambda_loss(
            lp[:, :width],
            old[idx, :width],
            adv[idx],
            mask[idx, :width],
            cfg,
            ref_logp=ref[idx, :width],
            num_tokens=n_tok,
            num_seqs=n_seq,
            horizon=19,
        )
        (g,) = torch.autograd.grad(part, lp)
        parts.append(part.detach())
        g_parts[idx] = g
    torch.testing.assert_close(torch.stack(parts).sum(), full.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_parts, g_full, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("policy_loss", ["ppo", "trace", "weight"])
def test_padding_gets_zero_loss_and_zero_gradient(policy_loss):
    logp, old, ref, adv, mask = make_batch(5)
    poisoned = logp.detach().clone()
    poisoned[~mask] = float("nan")
    poisoned.requires_grad_()
    old_p = old.clone()
    old_p[~mask] = float("inf")
    cfg = LossConfig(policy_loss=policy_loss, kl_coef=0.01, entropy_coef=0.01)
    ent = torch.rand_like(old)
    loss, metrics = grpo_lambda_loss(poisoned, old_p, adv, mask, cfg, ref_logp=ref, entropy=ent)
    clean, _ = grpo_lambda_loss(logp.detach(), old, adv, mask, cfg, ref_logp=ref, entropy=ent)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(clean.item(), rel=1e-6)
    (g,) = torch.autograd.grad(loss, poisoned)
    assert torch.all(g[~mask] == 0) and torch.isfinite(g).all()
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_trace_ratio_overflow_guard():
    logp, old, _, adv, mask = make_batch(6)
    huge = (old + 5.0).requires_grad_()  # summed over ~20 tokens, z ≈ 100 → exp would overflow fp32
    loss, metrics = grpo_lambda_loss(huge, old, adv, mask, LossConfig(lam=1.0, kl_coef=0.0))
    assert torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, huge)
    assert torch.isfinite(g).all()


# ---------------------------------------------------------------- KL, entropy, log-probs
def test_kl_estimators_match_formulas():
    logp, _, ref, _, _ = make_batch(7)
    lp, rf = logp.detach().double(), ref.double()
    torch.testing.assert_close(kl_penalty(lp, rf, "k1"), lp - rf)
    torch.testing.assert_close(kl_penalty(lp, rf, "k2"), 0.5 * (lp - rf) ** 2)
    torch.testing.assert_close(kl_penalty(lp, rf, "k3"), torch.exp(rf - lp) - (rf - lp) - 1)
    assert (kl_penalty(lp, rf, "k3") >= 0).all()
    assert kl_penalty(torch.tensor([0.0]), torch.tensor([50.0]), "k3").item() == 10.0  # clamped
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(lp, rf, "k4")


def test_logp_and_entropy_from_logits():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 7, 13, generator=gen)
    tokens = torch.randint(0, 13, (3, 7), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logp_from_logits(logits, tokens), expected)
    torch.testing.assert_close(
        token_logp_from_logits(logits.bfloat16(), tokens),
        torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, tokens[..., None]).squeeze(-1),
    )
    torch.testing.assert_close(
        token_logp_from_logits(logits, tokens, 0.7),
        torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1),
    )
    torch.testing.assert_close(
        entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy()
    )


# ---------------------------------------------------------------- config and argument errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(policy_loss="reinforce"), "unknown policy loss 'reinforce'; choose one of"),
        (dict(kl_estimator="k9"), "unknown KL estimator"),
        (dict(loss_agg="mean"), "unknown loss aggregation"),
        (dict(lam=1.2), "lam"),
        (dict(trace_style="late"), "unknown trace style"),
    ],
)
def test_bad_loss_config_fails_at_first_use_naming_it(kwargs, match):
    """Config values are validated with the run config (test_config.py); a LossConfig built by hand fails at the
    first use of a bad value, naming it (the registries and lambda_trace check their arguments)."""
    logp, old, ref, adv, mask = make_batch(0)
    with pytest.raises(ValueError, match=match):
        grpo_lambda_loss(logp, old, adv, mask, LossConfig(**kwargs), ref_logp=ref)


def test_loss_shape_errors_and_missing_ref():
    logp, old, ref, adv, mask = make_batch(0)
    with pytest.raises(ValueError, match="old_logp shape"):
        grpo_lambda_loss(logp, old[:, :-1], adv, mask, LossConfig(kl_coef=0.0))
    with pytest.raises(ValueError, match="advantages"):
        grpo_lambda_loss(logp, old, adv[:-1], mask, LossConfig(kl_coef=0.0))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_lambda_loss(logp, old, adv, mask, LossConfig(kl_coef=0.1))


def test_behaviour_mismatch_metrics():
    from grpo_lambda.algorithms import behaviour_mismatch

    logp, _, _, _, mask = make_batch(10)
    lp = logp.detach()
    same = behaviour_mismatch(lp, lp.clone(), mask)
    assert all(v.item() == 0 for v in same.values())
    shifted = lp + 0.3 * mask  # log μ = log π + 0.3 on valid tokens
    shifted[~mask] = float("nan")  # padding never leaks
    m = behaviour_mismatch(lp, shifted, mask)
    assert m["rollout/logp_abs_diff_mean"].item() == pytest.approx(0.3, rel=1e-5)
    assert m["rollout/logp_abs_diff_max"].item() == pytest.approx(0.3, rel=1e-5)
    assert m["rollout/logp_mismatch_k3"].item() == pytest.approx(math.exp(-0.3) - 1 + 0.3, rel=1e-4)
