"""Per-token credit (algorithms/credit.py) against loops and the real loss's gradient; its step metrics; the
answer tokens they single out (rewards/answer_tokens.py) with a real tokenizer."""

from __future__ import annotations

import pytest
import torch
from test_traces import loop_matrix, ragged_mask

from grpo_lambda.algorithms import LossConfig, grpo_lambda_loss
from grpo_lambda.algorithms.credit import credit_metrics, token_credit
from grpo_lambda.rewards.answer_tokens import answer_char_span, answer_token_mask


def batch(seed=0, rows=6, width=25):
    gen = torch.Generator().manual_seed(seed)
    mask = ragged_mask(rows, width, gen)
    mask[-1, :3] = True
    logp = -torch.rand(rows, width, generator=gen) * 3
    return mask, logp


@pytest.mark.parametrize("style,anchor", [("recent", "token"), ("both", "token"), ("both", "sequence"),
                                          ("early", "horizon"), ("recent", "horizon")])  # fmt: skip
def test_trace_credit_is_the_column_sum_of_the_weights(style, anchor):
    mask, _ = batch(1)
    cfg = LossConfig(policy_loss="trace", lam=0.9, trace_style=style, trace_anchor=anchor, trace_floor=1e-7)
    c = token_credit(mask, cfg, horizon=30)
    expected = loop_matrix(mask, 0.9, style, anchor, 1e-7, 30).sum(1)  # c_k = Σ_t w(t, k)
    torch.testing.assert_close(c.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(c[~mask] == 0)
    normed = token_credit(mask, LossConfig(**{**cfg.__dict__, "trace_norm": "mean"}), horizon=30)
    torch.testing.assert_close(normed.sum(-1), mask.sum(-1).float(), rtol=1e-5, atol=1e-5)  # Σ_k c_k = L


def test_ppo_credit_is_one_and_weight_credit_matches_a_loop():
    mask, logp = batch(2)
    assert torch.equal(token_credit(mask, LossConfig(policy_loss="ppo")), mask.float())
    cfg = LossConfig(policy_loss="weight", lam=0.8, trace_style="recent")
    c = token_credit(mask, cfg, logp=logp)
    w = loop_matrix(mask, 0.8, "recent", "token", 0.0)
    sig = torch.sigmoid(logp.double() - 1)
    eligibility = torch.einsum("btk,bk->bt", w, 1 + sig)  # E_t
    expected = eligibility + w.sum(1) * sig * (1 - sig)  # E_k + Σ_t w(t, k) σ′(log π(o_k) − 1)
    torch.testing.assert_close(c.double(), torch.where(mask, expected, 0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy_loss", ["ppo", "trace", "weight"])
def test_credit_is_the_losss_own_gradient_at_theta_old(policy_loss):
    """∇_{log π} loss = −Â_b c_k / N (token-mean, θ = θ_old, no KL): c is what the update actually weights."""
    mask, logp = batch(3)
    adv = torch.randn(mask.shape[0], generator=torch.Generator().manual_seed(4))
    cfg = LossConfig(policy_loss=policy_loss, lam=0.95, trace_style="both", kl_coef=0.0)
    lp = logp.clone().requires_grad_()
    loss, _ = grpo_lambda_loss(lp, lp.detach(), adv, mask, cfg)
    (grad,) = torch.autograd.grad(loss, lp)
    c = token_credit(mask, cfg, logp=logp)
    torch.testing.assert_close(grad, -adv[:, None] * c / mask.sum(), rtol=1e-5, atol=1e-8)


def test_metrics_of_grpo_and_of_token_anchored_grpo_lambda():
    mask = torch.arange(64)[None, :] < torch.tensor([64, 32, 16, 8])[:, None]
    grpo = credit_metrics(token_credit(mask, LossConfig(policy_loss="ppo")), mask)
    assert all(grpo[f"credit/decile_{i}"] == 1.0 for i in range(10))
    assert grpo["credit/first_last_ratio"] == 1.0 and grpo["credit/gini"] == pytest.approx(0.0, abs=1e-6)
    assert grpo["credit/effective_token_frac"] == pytest.approx(1.0)
    assert grpo["credit/weight_per_token"] == 1.0 and grpo["credit/long_short_ratio"] == 1.0
    lam = credit_metrics(
        token_credit(mask, LossConfig(policy_loss="trace", lam=1.0, trace_style="recent")), mask
    )
    # λ = 1, recent: c_k = L − k, so first/last = L (mean of 64, 32, 16, 8) and a response weighs (L + 1)/2 per token
    assert lam["credit/first_last_ratio"] == pytest.approx((64 + 32 + 16 + 8) / 4)
    assert lam["credit/weight_per_token"] == pytest.approx(sum((n + 1) / 2 for n in (64, 32, 16, 8)) / 4)
    assert lam["credit/long_short_ratio"] == pytest.approx(((65 / 2 + 33 / 2) / 2) / ((17 / 2 + 9 / 2) / 2))
    assert lam["credit/decile_0"] > lam["credit/decile_9"] and lam["credit/gini"] > 0.3
    mean = credit_metrics(
        token_credit(mask, LossConfig(policy_loss="trace", lam=1.0, trace_style="recent", trace_norm="mean")),
        mask,
    )
    assert mean["credit/weight_per_token"] == pytest.approx(1.0) and mean[
        "credit/long_short_ratio"
    ] == pytest.approx(1)
    assert mean["credit/first_last_ratio"] == pytest.approx(lam["credit/first_last_ratio"])  # same shape


def test_answer_share():
    mask = torch.ones(2, 10, dtype=torch.bool)
    credit = torch.arange(10, dtype=torch.float32).expand(2, 10) + 1  # 1 .. 10
    answers = torch.zeros(2, 10, dtype=torch.bool)
    answers[0, 8:] = True  # the last two tokens of row 0; row 1 has no marked answer and is left out
    m = credit_metrics(credit, mask, answers)
    assert m["credit/answer_share"] == pytest.approx((9 + 10) / 55)
    assert m["credit/answer_token_frac"] == pytest.approx(0.2)
    assert "credit/answer_share" not in credit_metrics(credit, mask, torch.zeros_like(answers))
    assert credit_metrics(credit, torch.zeros_like(mask)) == {}


@pytest.mark.parametrize(
    "text, span",
    [(r"so x = \boxed{\frac{1}{2}}.", r"\boxed{\frac{1}{2}}"), ("9 * 2 = 18\n#### 18\n", "#### 18"),
     (r"\boxed{1} then \boxed{2}", r"\boxed{2}"), ("no answer", None), (r"cut off \boxed{1", None)],
)  # fmt: skip
def test_answer_char_span(text, span):
    found = answer_char_span(text)
    assert (None if found is None else text[found[0] : found[1]]) == span


def test_answer_token_mask_with_a_real_tokenizer():
    from grpo_lambda.models.tiny import build_tokenizer

    tok = build_tokenizer()
    texts = ["First 3 + 4 = 7, so the answer is \\boxed{7}.", "We get 12.\n#### 12", "no marker at all"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    mask = answer_token_mask(tok, ids, width=max(map(len, ids)) + 2)
    for row, (text, row_ids) in enumerate(zip(texts, ids)):
        picked = [i for i in range(len(row_ids)) if mask[row, i]]
        if "marker" in text:
            assert not picked
            continue
        first, last = picked[0], picked[-1]
        assert picked == list(range(first, last + 1))  # one contiguous run of tokens
        span = answer_char_span(text)
        assert text[span[0] : span[1]] in tok.decode(
            row_ids[first : last + 1]
        )  # covers every answer character
        assert (
            len(tok.decode(row_ids[:first])) <= span[0]
        )  # ... and starts at the token holding the first one
        assert len(tok.decode(row_ids[:last])) < span[1]  # ... and ends at the token holding the last one
    assert not mask[:, -2:].any()  # padding columns


def test_plot_credit_draws_a_runs_profile(tmp_path):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "plot_credit.py"
    spec = importlib.util.spec_from_file_location("plot_credit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["plot_credit"] = module
    spec.loader.exec_module(module)
    mask, _ = batch(5)
    answers = torch.zeros_like(mask)
    answers[:, 1] = mask[:, 1]
    rows = []
    for step, lam in enumerate((0.5, 0.9, 0.99), start=1):
        c = token_credit(mask, LossConfig(policy_loss="trace", lam=lam))
        rows.append({"step": step, "reward/mean": 0.1, **credit_metrics(c, mask, answers)})
    rows.insert(1, {"step": 0, "eval/acc": 0.5})  # rows without credit metrics are skipped
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = module.plot(tmp_path, tmp_path / "credit.png")
    assert out.stat().st_size > 10_000
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.0}) + "\n")
    with pytest.raises(SystemExit, match="no credit/"):
        module.plot(tmp_path, tmp_path / "none.png")
