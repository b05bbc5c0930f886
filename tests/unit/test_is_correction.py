"""Off-policy correction by the engine's sampling log-probs (`algorithm.behaviour_is`): weights against loop
references, and how they enter the GRPO-λ loss (each token's score carries its own weight; dropped sequences leave
the loss and its normalisers; detached; micro-batch invariant)."""

from __future__ import annotations

import math

import pytest
import torch
from test_traces import ragged_mask, ref_weight

from grpo_lambda.algorithms import (
    POLICY_LOSSES,
    LossConfig,
    behaviour_is_weights,
    grpo_lambda_loss,
    kl_penalty,
    sequence_keep,
)
from grpo_lambda.learner.batch import build_batch, mini_batch_counts
from grpo_lambda.learner.metrics import TokenWeighted, reduce_rank_metrics

MODES = ["tis", "mis", "seq_filter"]
SEQUENCE_MODES = ["mis", "seq_filter"]
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
def loop_weights(old, mu, mask, mode, cap):
    """(weights [B, T], keep [B], truncated tokens) by loops over the definitions."""
    w = torch.zeros_like(old)
    keep = torch.ones(old.shape[0], dtype=torch.bool)
    truncated = 0
    for b in range(old.shape[0]):
        valid = [t for t in range(old.shape[1]) if mask[b, t]]
        if mode == "tis":
            for t in valid:
                ratio = math.exp(old[b, t].item() - mu[b, t].item())
                w[b, t] = min(ratio, cap)
                truncated += ratio > cap
            continue
        log_rho = sum(old[b, t].item() - mu[b, t].item() for t in valid)
        keep[b] = log_rho <= math.log(cap)
        for t in valid:
            w[b, t] = (math.exp(log_rho) if mode == "mis" else 1.0) if keep[b] else 0.0
        truncated += 0 if keep[b] else len(valid)
    return w, keep, truncated


@pytest.mark.parametrize(
    "mode,cap",
    [("tis", 1.2), ("tis", 2.0), ("mis", 1.5), ("mis", 3.0), ("seq_filter", 1.5), ("seq_filter", 3.0)],
)
def test_weights_and_metrics_match_loops(mode, cap):
    _, old, _, mu, _, mask = make_batch(1, batch=10, spread=0.4)
    weights, keep, metrics = behaviour_is_weights(old, mu, mask, mode, cap)
    expected, expected_keep, truncated = loop_weights(old, mu, mask, mode, cap)
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(keep, expected_keep)
    assert weights.dtype == torch.float32 and not weights.requires_grad
    assert torch.all(weights[~mask] == 0)
    n = int(mask.sum())
    assert 0 < truncated < n  # both sides of C are exercised
    assert metrics["learner/is_weight_mean"].item() == pytest.approx(expected[mask].mean().item(), rel=1e-6)
    assert metrics["learner/is_weight_max"].item() == pytest.approx(expected[mask].max().item(), rel=1e-6)
    assert metrics["learner/is_truncated_frac"].item() == pytest.approx(truncated / n, rel=1e-6)
    if mode == "mis":  # kept sequences are weighted by their ρ (<= C), not by 1
        kept_rho = weights[mask & keep[:, None]]
        assert kept_rho.max() <= cap and (kept_rho < 0.99).any()


def test_mis_weights_a_kept_sequence_by_its_ratio():
    """ρ = 0.5 ≤ C = 2: the sequence trains at weight 0.5 (masked IS), not at 1 (a filter)."""
    mask = torch.ones(2, 4, dtype=torch.bool)
    old = torch.full((2, 4), -1.0)
    mu = old.clone()
    mu[0] -= math.log(0.5) / 4  # Σ_t (log π_old − log μ) = log 0.5: ρ = 0.5
    mu[1] -= math.log(3.0) / 4  # ρ = 3 > C: dropped
    weights, keep, _ = behaviour_is_weights(old, mu, mask, "mis", 2.0)
    torch.testing.assert_close(weights[0], torch.full((4,), 0.5))
    assert keep.tolist() == [True, False] and torch.all(weights[1] == 0)
    weights, keep, _ = behaviour_is_weights(old, mu, mask, "seq_filter", 2.0)
    assert torch.all(weights[0] == 1) and keep.tolist() == [True, False]


def test_tis_weights_are_capped_and_overflow_safe():
    _, old, _, _, _, mask = make_batch(2)
    mu = old - 200.0  # π_old/μ = e^200: overflows fp32
    weights, _, metrics = behaviour_is_weights(old, mu, mask, "tis", 2.5)
    assert torch.all(weights[mask] == 2.5) and torch.all(weights[~mask] == 0)
    assert metrics["learner/is_truncated_frac"].item() == 1.0
    _, old, _, mu, _, mask = make_batch(3, spread=2.0)
    weights, _, _ = behaviour_is_weights(old, mu, mask, "tis", 1.7)
    assert weights.max() <= torch.tensor(1.7) and weights.min().item() >= 0


@pytest.mark.parametrize("mode", SEQUENCE_MODES)
def test_sequence_ratio_is_computed_in_log_space(mode):
    _, old, _, _, _, mask = make_batch(4)
    up, keep, _ = behaviour_is_weights(old, old - 50.0, mask, mode, 1e30)  # log ρ ≈ 50·len ≫ log C
    assert torch.all(up == 0) and not keep.any()
    down, keep, metrics = behaviour_is_weights(old, old + 50.0, mask, mode, 1.0)  # ρ ≈ e^-850: kept
    assert keep.all() and metrics["learner/is_truncated_frac"].item() == 0.0
    assert torch.all(torch.isfinite(down))
    if mode == "seq_filter":
        assert torch.equal(down, mask.float())
    else:  # ρ = e^(−50·length): kept, at a vanishing weight (0 where it underflows)
        assert down.max() < 1e-20


def test_empty_batch_and_none_mode():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    old = torch.zeros(2, 3)
    for mode in MODES:
        w, _, metrics = behaviour_is_weights(old, old, mask, mode, 2.0)
        assert torch.all(w == 0) and all(torch.isfinite(v) for v in metrics.values())
    _, old, _, _, _, mask = make_batch(5)
    w, keep, _ = behaviour_is_weights(old, None, mask, "none", 2.0)
    assert torch.equal(w, mask.float()) and keep.all()


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
    weights, keep, _ = behaviour_is_weights(old, mu, mask, mode, 1.0)  # even the tightest cap keeps ratio 1
    assert torch.equal(weights, mask.float()) and keep.all()
    base = LossConfig(policy_loss=policy_loss, kl_coef=0.01)
    loss0, g0, _ = loss_and_grad(logp, old, adv, mask, base, ref_logp=ref)
    cfg = LossConfig(policy_loss=policy_loss, kl_coef=0.01, behaviour_is=mode, behaviour_is_cap=1.0)
    loss1, g1, m1 = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu)
    assert_same(policy_loss, loss0, loss1, g0, g1)
    assert m1["learner/is_weight_mean"].item() == 1.0 and m1["learner/is_truncated_frac"].item() == 0.0


@pytest.mark.parametrize("policy_loss", POLICY)
def test_seq_filter_with_a_huge_cap_is_none(policy_loss):
    logp, old, ref, mu, adv, mask = make_batch(8, spread=1.0)
    loss0, g0, _ = loss_and_grad(logp, old, adv, mask, LossConfig(policy_loss=policy_loss), ref_logp=ref)
    cfg = LossConfig(policy_loss=policy_loss, behaviour_is="seq_filter", behaviour_is_cap=1e30)
    loss1, g1, _ = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu)
    assert_same(policy_loss, loss0, loss1, g0, g1)


def assert_same(policy_loss, loss0, loss1, g0, g1):
    """Bit for bit, but for ε-weight's gradient: log π reaches its loss twice (ℓ_t and E_t), and with weights the
    two paths meet before the KL term's instead of beside it, so the sum's order (its last bit) differs."""
    assert torch.equal(loss0, loss1)
    if policy_loss == "weight":
        torch.testing.assert_close(g0, g1, rtol=1e-6, atol=1e-9)
    else:
        assert torch.equal(g0, g1)


def reference_gradient(logp, old, ref, mu, adv, mask, cfg, horizon=17):
    """∇ of Σ_{kept b, t} m_t (w_t ℓ_t^pg + β kl_t) / N_kept: the weight multiplying the (unweighted) policy loss as a
    constant — the usual IS gradient, which the score weighting must equal wherever ℓ_t depends on token t only
    (ppo) or the weight is constant along the sequence (mis, seq_filter)."""
    weights, keep, metrics = behaviour_is_weights(old, mu, mask, cfg.behaviour_is, cfg.behaviour_is_cap)
    kept = mask & keep[:, None]
    lp = logp.detach().requires_grad_()
    pg, _ = POLICY_LOSSES.get(cfg.policy_loss)(
        lp, old, adv[:, None].expand_as(lp), kept, cfg, horizon=horizon
    )
    kl = kl_penalty(lp, ref, cfg.kl_estimator)
    n = kept.sum()
    weighted = torch.where(kept, weights * pg + cfg.kl_coef * kl, 0.0).sum() / n
    value = torch.where(kept, pg + cfg.kl_coef * kl, 0.0).sum() / n  # the loss value is the unweighted one
    (g_ref,) = torch.autograd.grad(weighted, lp)
    return g_ref, value.detach(), metrics


@pytest.mark.parametrize("single_update", [False, True])
@pytest.mark.parametrize(
    "policy_loss,mode",
    [("ppo", m) for m in MODES] + [(p, m) for p in ("trace", "weight") for m in SEQUENCE_MODES],
)
def test_gradient_is_the_usual_is_gradient(policy_loss, mode, single_update):
    """ppo: ∇ = Σ_t w_t ∇ℓ_t (+ KL) / N, the usual truncated IS; mis / seq_filter: a dropped sequence leaves the
    loss and N, a kept one is weighted by ρ (mis) or 1. The weights are constants (detached). single_update:
    old_logp = logp.detach() (the learner's path without an explicit θ_old)."""
    logp, old, ref, mu, adv, mask = make_batch(9, spread=0.4)
    old = logp.detach() if single_update else old
    cfg = LossConfig(policy_loss=policy_loss, kl_coef=0.05, lam=0.9, behaviour_is=mode, behaviour_is_cap=1.3)
    loss, g, _ = loss_and_grad(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu, horizon=17)
    g_ref, value, metrics = reference_gradient(logp, old, ref, mu, adv, mask, cfg)
    assert 0 < metrics["learner/is_truncated_frac"].item() < 1  # both sides of C
    assert not behaviour_is_weights(logp, mu, mask, mode, 1.3)[0].requires_grad  # detached even from θ
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(loss, value, rtol=1e-5, atol=1e-8)
    if policy_loss == "ppo" and single_update:  # θ = θ_old, no KL: ∇ℓ_t = −Â ∇log π(o_t), so g = −w Â / N
        cfg.kl_coef = 0.0
        _, g_pg, _ = loss_and_grad(logp, old, adv, mask, cfg, behaviour_logp=mu)
        weights, keep, _ = behaviour_is_weights(old, mu, mask, mode, 1.3)
        n = (mask & keep[:, None]).sum()
        torch.testing.assert_close(
            g_pg, torch.where(mask, -weights * adv[:, None] / n, 0.0), rtol=1e-5, atol=1e-8
        )


# ---------------------------------------------------------------- per-token TIS with a trace (docs/algorithm.md)
def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def loop_tis_gradient(logp, old, mu, adv, mask, policy_loss, lam, style, anchor, horizon, cap, eps=0.2):
    """d loss / d log π(o_k) in float64 loops, token-mean, with each token's score weighted by its own
    w_k = min(π_old/μ, C)(o_k):
      trace:  Σ_{t≥k} g_t w(t,k) w_k / N,  g_t = ∂ℓ_t/∂z_t = −Â ρ_t where the unclipped term is active, else 0;
      weight: E_t g_t w_t [k = t] + ℓ_t w(t,k) σ′(log π(o_k) − 1) w_k for k ≤ t  (ℓ_t the PPO loss, E_t the
              eligibility), summed over t, / N."""
    B, T = logp.shape
    grad = torch.zeros(B, T, dtype=torch.float64)
    n = int(mask.sum())
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t]]
        if not valid:
            continue
        last, a_b = valid[-1], adv[b].item()
        w_is = {k: min(math.exp(old[b, k].item() - mu[b, k].item()), cap) for k in valid}
        x = {k: logp[b, k].item() - old[b, k].item() for k in valid}
        for t in valid:
            w = {k: ref_weight(t, k, last, lam, style, anchor, 0.0, horizon) for k in valid if k <= t}
            r = math.exp(sum(w[k] * x[k] for k in w) if policy_loss == "trace" else x[t])
            active = (a_b >= 0 and r <= 1 + eps) or (a_b < 0 and r >= 1 - eps)
            g_t = -a_b * r if active else 0.0
            if policy_loss == "trace":
                for k in w:
                    grad[b, k] += g_t * w[k] * w_is[k] / n
            else:
                ell = max(-a_b * r, -a_b * min(max(r, 1 - eps), 1 + eps))
                elig = sum(w[k] * (1 + sigmoid(logp[b, k].item() - 1)) for k in w)
                grad[b, t] += elig * g_t * w_is[t] / n
                for k in w:
                    s = sigmoid(logp[b, k].item() - 1)
                    grad[b, k] += ell * w[k] * s * (1 - s) * w_is[k] / n
    return grad


@pytest.mark.parametrize("policy_loss", ["trace", "weight"])
@pytest.mark.parametrize("style,anchor", [("recent", "token"), ("both", "token"), ("both", "sequence"),
                                          ("recent", "horizon")])  # fmt: skip
@pytest.mark.parametrize("single_update", [True, False])
def test_token_tis_weights_each_score_by_its_own_ratio(policy_loss, style, anchor, single_update):
    logp, old, _, mu, adv, mask = make_batch(13, batch=5, horizon=12, spread=0.5)
    old = logp.detach() if single_update else old
    cfg = LossConfig(policy_loss=policy_loss, lam=0.8, trace_style=style, trace_anchor=anchor, kl_coef=0.0,
                     behaviour_is="tis", behaviour_is_cap=1.5)  # fmt: skip
    loss, g, metrics = loss_and_grad(logp, old, adv, mask, cfg, behaviour_logp=mu, horizon=15)
    expected = loop_tis_gradient(logp.detach(), old, mu, adv, mask, policy_loss, 0.8, style, anchor, 15, 1.5)
    assert 0 < metrics["learner/is_truncated_frac"].item() < 1
    torch.testing.assert_close(g.double(), expected, rtol=1e-4, atol=1e-7)
    plain, _, _ = loss_and_grad(logp, old, adv, mask, LossConfig(**{**cfg.__dict__, "behaviour_is": "none"}),
                                horizon=15)  # fmt: skip
    assert torch.equal(loss, plain)  # the weights act on gradients only: the loss value is unchanged
    # ... and not as a weight on ℓ_t, which would give token k's score the ratios of the later tokens t
    weights, _, _ = behaviour_is_weights(old, mu, mask, "tis", 1.5)
    lp = logp.detach().requires_grad_()
    pg, _ = POLICY_LOSSES.get(policy_loss)(lp, old, adv[:, None].expand_as(lp), mask, cfg, horizon=15)
    (g_on_loss,) = torch.autograd.grad(torch.where(mask, weights * pg, 0.0).sum() / mask.sum(), lp)
    assert (g_on_loss - g).abs().max() > 1e-4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy_loss,agg", [("trace", "token-mean"), ("weight", "seq-mean-token-mean"),
                                             ("ppo", "seq-mean-token-sum")])  # fmt: skip
def test_micro_batches_sum_to_the_mini_batch(policy_loss, agg, mode):
    """Given the driver's counts (`mini_batch_counts` with `sequence_keep`), micro-batches trimmed to their own
    width sum to the mini-batch loss and gradient; IS metrics reduce to the whole batch's."""
    logp, old, ref, mu, adv, mask = make_batch(10, spread=0.4)
    cfg = LossConfig(
        policy_loss=policy_loss, loss_agg=agg, kl_coef=0.01, behaviour_is=mode, behaviour_is_cap=1.5
    )
    full, _ = grpo_lambda_loss(logp, old, adv, mask, cfg, ref_logp=ref, behaviour_logp=mu, horizon=17)
    (g_full,) = torch.autograd.grad(full, logp)
    lengths = mask.sum(-1).tolist()
    batch = build_batch([[1]] * len(lengths), [[2] * n for n in lengths], adv,
                        old_logp=old, behaviour_logp=mu.nan_to_num(0.0))  # fmt: skip
    (count,) = mini_batch_counts(batch, len(lengths), sequence_keep(old, mu, mask, mode, 1.5))
    if mode != "tis":
        assert count.num_seqs < mask.shape[0] and count.num_tokens < mask.sum()  # something was dropped
    parts, g_parts, acc = [], torch.zeros_like(logp), TokenWeighted()
    for idx in (slice(0, 3), slice(3, 8)):
        lp = logp[idx].detach().requires_grad_()
        width = int(mask[idx].sum(-1).max().clamp(min=1))  # each micro-batch trimmed to its own length
        part, metrics = grpo_lambda_loss(
            lp[:, :width], old[idx, :width], adv[idx], mask[idx, :width], cfg,
            ref_logp=ref[idx, :width], behaviour_logp=mu[idx, :width],
            num_tokens=count.num_tokens, num_seqs=count.num_seqs, horizon=17,
        )  # fmt: skip
        (g,) = torch.autograd.grad(part, lp)
        parts.append(part.detach())
        g_parts[idx] = g
        is_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("learner/is_")}
        acc.add(is_metrics, float(mask[idx].sum()))
    torch.testing.assert_close(torch.stack(parts).sum(), full.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_parts, g_full, rtol=1e-6, atol=1e-8)
    # the learner's reduction: token-weighted means, and a true maximum for `is_weight_max` (also across ranks)
    _, _, whole = behaviour_is_weights(old, mu, mask, mode, 1.5)
    means = acc.means()
    for key in ("learner/is_weight_mean", "learner/is_truncated_frac", "learner/is_weight_max"):
        assert means[key] == pytest.approx(whole[key].item(), rel=1e-6)
    halves = [dict(means, **{"learner/is_weight_max": 0.0, "learner/num_tokens": 1.0}),
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
    with pytest.raises(ValueError, match="'auto' is resolved at start-up"):
        grpo_lambda_loss(
            logp, old, adv, mask, LossConfig(kl_coef=0.0, behaviour_is="auto"), behaviour_logp=mu
        )
    with pytest.raises(ValueError, match="behaviour_is_cap must be >= 1"):
        behaviour_is_weights(old, mu, mask, "tis", 0.5)
