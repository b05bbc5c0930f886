"""Off-policy correction by the engine's sampling log-probs (`algorithm.behaviour_is`): weights against loop
references, and how they enter the GRPO-λ loss (policy term only, detached, micro-batch invariant)."""

from __future__ import annotations

import math

import pytest
import torch
from test_traces import ragged_mask

from grpo_lambda.algorithms import (
    POLICY_LOSSES,
    LossConfig,
    behaviour_is_weights,
    grpo_lambda_loss,
    kl_penalty,
)
from grpo_lambda.learner.metrics import TokenWeighted, reduce_rank_metrics

MODES = ["tis", "mis"]
POLICY = ["ppo", "trace", "weight"]


def make_batch(seed=0, batch=8, horizon=17, spread=0.3):
    """logp (leaf), old, ref, log μ (NaN on padding), adv, mask; log μ = old + noise of scale `spread`."""
    gen = torch.Generator().manual_seed(seed)
    mask = ragged_mask(batch, horizon, gen)
    mask[-1, :2] = True  # no empty rows
    old = -torch.rand(batch, horizon, generator=gen) * 2
    logp = (old + 0.1 * torch.randn(batch, horizon, generator=gen)).requires_grad_()
    ref = old + 0.05 * torch.randn(batch, horizon, generator=gen)
    mu = old + spread * torch.randn(batch, horizon, generator=gen)
    mu[~mask] = float("nan")  # padding must never leak
    adv = torch.randn(batch, generator=gen)
    return logp, old, ref, mu, adv, mask


# ---------------------------------------------------------------- the weights against loops
def loop_tis(old, mu, mask, cap):
    w = torch.zeros_like(old)
    truncated = 0
    for b in range(old.shape[0]):
        for t in range(old.shape[1]):
            if mask[b, t]:
                ratio = math.exp(old[b, t].item() - mu[b, t].item())
                w[b, t] = min(ratio, cap)
                truncated += ratio > cap
    return w, truncated


def loop_mis(old, mu, mask, cap):
    w = torch.zeros_like(old)
    truncated = 0
    for b in range(old.shape[0]):
        valid = [t for t in range(old.shape[1]) if mask[b, t]]
        log_rho = sum(old[b, t].item() - mu[b, t].item() for t in valid)
        keep = log_rho <= math.log(cap)
        for t in valid:
            w[b, t] = 1.0 if keep else 0.0
        truncated += 0 if keep else len(valid)
    return w, truncated


@pytest.mark.parametrize("mode,cap", [("tis", 1.2), ("tis", 2.0), ("mis", 1.5), ("mis", 3.0)])
def test_weights_and_metrics_match_loops(mode, cap):
    _, old, _, mu, _, mask = make_batch(1, batch=10, spread=0.4)
    weights, metrics = behaviour_is_weights(old, mu, mask, mode, cap)
    expected, truncated = (loop_tis if mode == "tis" else loop_mis)(old, mu, mask, cap)
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=1e-7)
    assert weights.dtype == torch.float32 and not weights.requires_grad
    assert torch.all(weights[~mask] == 0)
    n = int(mask.sum())
    assert 0 < truncated < n  # both sides of C are exercised
    assert metrics["learner/is_weight_mean"].item() == pytest.approx(expected[mask].mean().item(), rel=1e-6)
    assert metrics["learner/is_weight_max"].item() == pytest.approx(expected[mask].max().item(), rel=1e-6)
    assert metrics["learner/is_truncated_frac"].item() == pytest.approx(truncated / n, rel=1e-6)


def test_tis_weights_are_capped_and_overflow_safe():
    _, old, _, _, _, mask = make_batch(2)
    mu = old - 200.0  # π_old/μ = e^200: overflows fp32
    weights, metrics = behaviour_is_weights(old, mu, mask, "tis", 2.5)
    assert torch.all(weights[mask] == 2.5) and torch.all(weights[~mask] == 0)
    assert metrics["learner/is_truncated_frac"].item() == 1.0
    _, old, _, mu, _, mask = make_batch(3, spread=2.0)
    weights, _ = behaviour_is_weights(old, mu, mask, "tis", 1.7)
    assert weights.max() <= torch.tensor(1.7) and weights.min().item() >= 0


def test_mis_is_computed_in_log_space():
    _, old, _, _, _, mask = make_batch(4)
    up, _ = behaviour_is_weights(old, old - 50.0, mask, "mis", 1e30)  # log ρ ≈ 50·len ≫ log C
    assert torch.all(up == 0)
    down, metrics = behaviour_is_weights(old, old + 50.0, mask, "mis", 1.0)  # ρ ≈ e^-850: kept
    assert torch.equal(down, mask.float()) and metrics["learner/is_truncated_frac"].item() == 0.0


def test_empty_batch_and_none_mode():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    old = torch.zeros(2, 3)
    for mode in MODES:
        w, metrics = behaviour_is_weights(old, old, mask, mode, 2.0)
        assert torch.all(w == 0) and all(torch.isfinite(v) for v in metrics.values())
    _, old, _, _, _, mask = make_batch(5)
    w, _ = behaviour_is_weights(old, None, mask, "none", 2.0)
    assert torch.equal(w, mask.float())


# ---------------------------------------------------------------- inside grpo_lambda_loss
def loss_and_grad(logp, *args, **kwargs):
    lp = logp.detach().clone().requires_grad_()
    loss, metrics = grpo_lambda_loss(lp, *args, **kwargs)
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g, metrics


@pytest.mark.parametrize("policy_loss", POLICY)
def test_none_is_bitwise_unchanged(policy_loss):
    logp, old, ref, mu, adv, mask = make_batch(6)
    cfg = LossConfig(policy_loss=policy_loss, kl_coef=0.01, lam=0.9)
    loss0, g0, m0 = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, horizon=17)
    loss1, g1, m1 = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, horizon=17, behaviour_logp=mu)
    assert torch.equal(loss0, loss1) and torch.equal(g0, g1)
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy_loss", POLICY)
def test_behaviour_equal_to_old_gives_unit_weights(mode, policy_loss):
    logp, old, ref, _, adv, mask = make_batch(7)
    mu = old.clone()
    weights, _ = behaviour_is_weights(old, mu, mask, mode, 1.0)  # even the tightest cap keeps ratio 1
    assert torch.equal(weights, mask.float())
    base = LossConfig(policy_loss=policy_loss, kl_coef=0.01)
    loss0, g0, _ = loss_and_grad(logp, old, adv, mask, base, ref_logp=ref)
    cfg = LossConfig(policy_loss=policy_loss, kl_coef=0.01, behaviour_is=mode, behaviour_is_cap=1.0)
    loss1, g1, m1 = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu)
    assert torch.equal(loss0, loss1) and torch.equal(g0, g1)
    assert m1["learner/is_weight_mean"].item() == 1.0 and m1["learner/is_truncated_frac"].item() == 0.0


@pytest.mark.parametrize("policy_loss", POLICY)
def test_mis_with_a_huge_cap_is_none(policy_loss):
    logp, old, ref, mu, adv, mask = make_batch(8, spread=1.0)
    loss0, g0, _ = loss_and_grad(logp, old, adv, mask, LossConfig(policy_loss=policy_loss), ref_logp=ref)
    cfg = LossConfig(policy_loss=policy_loss, behaviour_is="mis", behaviour_is_cap=1e30)
    loss1, g1, _ = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu)
    assert torch.equal(loss0, loss1) and torch.equal(g0, g1)


@pytest.mark.parametrize("single_update", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy_loss", POLICY)
def test_gradient_is_weight_times_policy_gradient(policy_loss, mode, single_update):
    """∇ loss = Σ_t m_t (w_t ∇ℓ_t^pg + β ∇kl_t) / N: the weight multiplies only the policy term and is a
    constant. single_update: old_logp = logp.detach() (the learner's path without an explicit θ_old)."""
    logp, old, ref, mu, adv, mask = make_batch(9, spread=0.4)
    old = logp.detach() if single_update else old
    cfg = LossConfig(policy_loss=policy_loss, kl_coef=0.05, lam=0.9, behaviour_is=mode, behaviour_is_cap=1.3)
    loss, _ = grpo_lambda_loss(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu, horizon=17)
    (g,) = torch.autograd.grad(loss, logp)

    weights, is_metrics = behaviour_is_weights(old, mu, mask, mode, 1.3)
    assert not weights.requires_grad and 0 < is_metrics["learner/is_truncated_frac"].item() < 1
    assert not behaviour_is_weights(logp, mu, mask, mode, 1.3)[0].requires_grad  # detached even from θ
    lp = logp.detach().requires_grad_()
    adv_t = adv[:, None].expand_as(lp)
    pg, _ = POLICY_LOSSES.get(policy_loss)(lp, old, adv_t, mask, cfg, horizon=17)  # unweighted ℓ_t^pg
    kl = kl_penalty(lp, ref, cfg.kl_estimator)
    n = mask.sum()
    expected = torch.where(mask, weights * pg + cfg.kl_coef * kl, 0.0).sum() / n
    (g_ref,) = torch.autograd.grad(expected, lp)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-8)
    if policy_loss == "ppo" and single_update:  # θ = θ_old, no KL: ∇ℓ_t = −Â ∇log π(o_t), so g = −w Â / N
        cfg.kl_coef = 0.0
        _, g_pg, _ = loss_and_grad(logp, old, adv, mask, cfg, behaviour_logp=mu)
        torch.testing.assert_close(
            g_pg, torch.where(mask, -weights * adv[:, None] / n, 0.0), rtol=1e-5, atol=1e-8
        )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy_loss,agg", [("trace", "token-mean"), ("weight", "seq-mean-token-mean")])
def test_micro_batches_sum_to_the_mini_batch(policy_loss, agg, mode):
    logp, old, ref, mu, adv, mask = make_batch(10, spread=0.4)
    cfg = LossConfig(
        policy_loss=policy_loss, loss_agg=agg, kl_coef=0.01, behaviour_is=mode, behaviour_is_cap=1.5
    )
    full, _ = grpo_lambda_loss(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu, horizon=17)
    (g_full,) = torch.autograd.grad(full, logp)
    n_tok, n_seq = mask.sum().item(), mask.shape[0]
    parts, g_parts, acc = [], torch.zeros_like(logp), TokenWeighted()
    for idx in (slice(0, 3), slice(3, 8)):
        lp = logp[idx].detach().requires_grad_()
        width = int(mask[idx].sum(-1).max().clamp(min=1))  # each micro-batch trimmed to its own length
        part, metrics = grpo_lambda_loss(
            lp[:, :width], old[idx, :width], adv[idx], mask[idx, :width], cfg,
            ref_logp=ref[idx, :width], behaviour_logp=mu[idx, :width],
            num_tokens=n_tok, num_seqs=n_seq, horizon=17,
        )  # fmt: skip
        (g,) = torch.autograd.grad(part, lp)
        parts.append(part.detach())
        g_parts[idx] = g
        is_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("learner/is_")}
        acc.add(is_metrics, float(mask[idx].sum()))
    torch.testing.assert_close(torch.stack(parts).sum(), full.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_parts, g_full, rtol=1e-6, atol=1e-8)
    # the learner's reduction: token-weighted means, and a true maximum for `is_weight_max` (also across ranks)
    weights, whole = behaviour_is_weights(old, mu, mask, mode, 1.5)
    means = acc.means()
    for key in ("learner/is_weight_mean", "learner/is_truncated_frac", "learner/is_weight_max"):
        assert means[key] == pytest.approx(whole[key].item(), rel=1e-6)
    halves = [dict(means, **{"learner/is_weight_max": 0.5, "learner/num_tokens": 1.0}),
              dict(means, **{"learner/num_tokens": 2.0})]  # fmt: skip
    reduced = reduce_rank_metrics(halves)["learner/is_weight_max"]
    assert reduced == pytest.approx(whole["learner/is_weight_max"].item())


def test_padding_never_leaks():
    logp, old, ref, mu, adv, mask = make_batch(11, spread=0.4)
    poisoned = old.clone()
    poisoned[~mask] = float("inf")
    for mode in MODES:
        cfg = LossConfig(kl_coef=0.01, behaviour_is=mode)
        loss, g, metrics = loss_and_grad(logp, poisoned, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu)
        clean, _, _ = loss_and_grad(
            logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu.nan_to_num(0.0)
        )
        assert torch.isfinite(loss) and loss.item() == pytest.approx(clean.item(), rel=1e-6)
        assert torch.all(g[~mask] == 0) and all(torch.isfinite(v).all() for v in metrics.values())


def test_errors():
    logp, old, ref, mu, adv, mask = make_batch(12)
    with pytest.raises(ValueError, match="behaviour_is='tis' needs behaviour_logp"):
        grpo_lambda_loss(logp, old, adv, mask, LossConfig(kl_coef=0.0, behaviour_is="tis"))
    with pytest.raises(ValueError, match="behaviour_logp shape"):
        grpo_lambda_loss(
            logp, old, adv, mask, LossConfig(kl_coef=0.0, behaviour_is="mis"), behaviour_logp=mu[:, 1:]
        )
    with pytest.raises(ValueError, match="unknown behaviour_is 'seq'"):
        grpo_lambda_loss(logp, old, adv, mask, LossConfig(kl_coef=0.0, behaviour_is="seq"), behaviour_logp=mu)
    with pytest.raises(ValueError, match="behaviour_is_cap must be >= 1"):
        behaviour_is_weights(old, mu, mask, "tis", 0.5)
