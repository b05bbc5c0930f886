import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_lambda.eval import avg_at_k, maj_at_k, pass_at_k, pass_ks, summarize_correctness
from grpo_lambda.eval.report import (
    compare,
    flat_metrics,
    plot_compare,
    plot_summary,
    render_table,
    summarize,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def brute_pass_at_k(n, c, k):
    """Fraction of all k-subsets of the n samples that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 5, 2), (8, 1, 8), (7, 3, 4)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_summary_and_errors():
    res = summarize_correctness([[True, False, False, False], [True, True, True, True]], ks=(1, 2))
    assert res["avg@4"] == pytest.approx(0.625)
    assert res["pass@1"] == pytest.approx(0.625)
    assert res["pass@2"] == pytest.approx((0.5 + 1) / 2)
    assert avg_at_k([]) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


# ------------------------------------------------------------------------------------- pass@k closed form
def test_pass_at_k_equals_closed_form_up_to_64():
    for n in range(1, 65):
        for c in range(n + 1):
            previous = 0.0
            for k in range(1, n + 1):
                value = pass_at_k(n, c, k)
                assert abs(value - (1 - math.comb(n - c, k) / math.comb(n, k))) < 1e-12, (n, c, k)
                assert value >= previous - 1e-15, (n, c, k)  # monotone in k
                previous = value
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
            assert pass_at_k(n, c, n) == (1.0 if c else 0.0)


def test_pass_ks():
    assert pass_ks(1) == [1]
    assert pass_ks(2) == [1, 2]
    assert pass_ks(12) == [1, 2, 4, 8, 12]
    assert pass_ks(16) == [1, 2, 4, 8, 16]
    assert pass_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError):
        pass_ks(0)


# ------------------------------------------------------------------------------------- maj@k
def test_maj_at_k_plurality_and_none_answers():
    assert maj_at_k(["3", "3", "5", None], [False, False, True, False]) == 0.0
    assert maj_at_k(["5", "5", "3"], [True, True, False]) == 1.0
    # None never votes, however many there are
    assert maj_at_k([None, None, None, "7"], [False, False, False, True]) == 1.0
    assert maj_at_k([None, "", "  "], [False, False, False]) == 0.0  # blank = no answer
    assert maj_at_k([None, None], [False, False]) == 0.0
    assert maj_at_k([], []) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False])


def test_maj_at_k_ties_are_order_independent():
    assert maj_at_k(["a", "b"], [True, False]) == 0.5
    answers = ["a", "a", "b", "b", "c"]
    correct = [True, True, False, False, True]
    scores = {
        maj_at_k([answers[i] for i in p], [correct[i] for i in p]) for p in itertools.permutations(range(5))
    }
    assert scores == {0.5}  # a and b tie (c is correct but smaller)
    assert maj_at_k(["a", "b", "c"], [True, True, False]) == pytest.approx(2 / 3)


def test_maj_at_k_class_correct_by_strict_majority():
    assert maj_at_k(["x", "x", "x"], [True, True, False]) == 1.0
    assert maj_at_k(["x", "x"], [True, False]) == 0.0


def test_maj_at_k_custom_equivalence():
    from fractions import Fraction

    answers = ["1/2", "0.5", " 1/2", "3", "3"]
    correct = [True, True, True, False, False]
    # default: exact string after strip: "1/2" (2 votes) ties with "3" (2 votes)
    assert maj_at_k(answers, correct) == 0.5

    def same(a, b):
        return Fraction(a.strip()) == Fraction(b.strip())

    assert maj_at_k(answers, correct, same=same) == 1.0  # 1/2 and 0.5 vote together: 3 against 2


# ------------------------------------------------------------------------------------- report.summarize
def rec(dataset, pid, sample, outcome, extracted=None, tokens=100, truncated=False):
    return {"dataset": dataset, "id": pid, "sample": sample, "extracted": extracted, "gold": "g",
            "outcome": outcome, "reward": 1.0 if outcome == "correct" else 0.0, "response_tokens": tokens,
            "truncated": truncated, "prompt": "p", "response": "r"}  # fmt: skip


def hand_records():
    p1 = [("correct", "1/2", 100, False), ("wrong", "3", 200, False), ("wrong", "3", 300, False),
          ("unparsable", None, 400, True)]  # fmt: skip
    out = [rec("math500", "p1", i, o, x, t, tr) for i, (o, x, t, tr) in enumerate(p1)]
    out += [rec("math500", "p2", i, "correct", "5", 50) for i in range(4)]
    out += [rec("aime24", 7, i, o, "1") for i, o in enumerate(["correct", "timeout", "error", "wrong"])]
    return out


def test_summarize_hand_built():
    summary = summarize(
        hand_records(), {("math500", "p1"): 0.0, ("math500", "p2"): 1.0, ("aime24", 7): 0.25}, k=4
    )
    assert summary["k"] == 4
    assert list(summary["datasets"]) == ["math500", "aime24"]
    m = summary["datasets"]["math500"]
    assert m["avg@4"] == pytest.approx(0.625)
    assert m["pass@1"] == pytest.approx(0.625)
    assert m["pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # p1: 1 − C(3,2)/C(4,2) = 0.5
    assert m["pass@4"] == pytest.approx(1.0)
    assert "pass@3" not in m and "pass@8" not in m
    assert m["maj@4"] == pytest.approx(0.5)
    assert m["prompts"] == 2 and m["samples"] == 8
    assert m["response_tokens_mean"] == pytest.approx(150.0)
    assert m["truncated_frac"] == pytest.approx(0.125)
    assert m["reward_mean"] == pytest.approx(0.625)
    assert m["outcomes"] == {"correct": 5, "wrong": 2, "unparsable": 1, "timeout": 0, "error": 0}
    a = summary["datasets"]["aime24"]
    assert (a["avg@4"], a["pass@2"], a["pass@4"], a["maj@4"]) == pytest.approx((0.25, 0.5, 1.0, 0.25))
    assert a["outcomes"] == {"correct": 1, "wrong": 1, "unparsable": 0, "timeout": 1, "error": 1}
    pa = summary["paper_average"]
    assert pa["avg@4"] is None and pa["missing"] == ["olympiadbench", "minerva_math", "amc23"]
    json.dumps(summary, allow_nan=False)  # serialisable as is

    flat = flat_metrics(summary)
    assert flat["eval/math500/avg@4"] == pytest.approx(0.625) and flat["eval/aime24/maj@4"] == 0.25
    assert "eval/math500/prompts" not in flat and "eval/paper_average/avg@4" not in flat


def test_summarize_order_duplicates_default_k_and_fallback_maj():
    records = hand_records()
    shuffled = list(reversed(records)) + [records[1]]  # a resumed file repeating one sample
    summary = summarize(shuffled)  # k = fewest samples = 4; maj from the extracted answers (exact match)
    assert summary["k"] == 4
    m = summary["datasets"]["math500"]
    assert m["samples"] == 8 and m["avg@4"] == pytest.approx(0.625)
    assert m["maj@4"] == pytest.approx(0.5)  # p1: "3" (2 wrong votes) beats "1/2"; p2: "5" correct
    assert summary["datasets"]["aime24"]["maj@4"] == pytest.approx(0.0)  # "1" voted 4 times, 1 correct of 4
    with pytest.raises(ValueError, match="fewer than k=8"):
        summarize(records, k=8)
    with pytest.raises(ValueError, match="no evaluation records"):
        summarize([])


def test_paper_average_complete():
    records = []
    accs = {"aime24": 0.25, "math500": 0.75, "olympiadbench": 0.5, "minerva_math": 0.0, "amc23": 1.0}
    for name, acc in accs.items():
        c = int(acc * 4)
        records += [rec(name, 0, i, "correct" if i < c else "wrong", str(i < c)) for i in range(4)]
    records += [rec("gsm8k_test", 0, i, "correct", "1") for i in range(4)]  # not one of the five
    pa = summarize(records, k=4)["paper_average"]
    assert pa["missing"] == [] and pa["avg@4"] == pytest.approx(0.5)
    assert pa["pass@4"] == pytest.approx(0.8)


# ------------------------------------------------------------------------------------- tables, charts, CLI
def test_render_table_and_plot(tmp_path):
    summary = summarize(hand_records(), k=4)
    summary["meta"] = {"model_path": "/models/tiny", "k": 4, "temperature": 0.6, "datasets": ["math500"]}
    table = render_table(summary)
    header = table.splitlines()[2]
    assert header.startswith("| dataset | avg@4 | pass@1 | pass@2 | pass@4 | maj@4 | prompts | tokens |")
    row = next(line for line in table.splitlines() if line.startswith("| math500 |"))
    assert row == "| math500 | 62.5 | 62.5 | 75.0 | 100.0 | 50.0 | 2 | 150 | 12.5% |"
    assert "paper average (missing: olympiadbench, minerva_math, amc23)" in table
    assert "/models/tiny" in table

    png = plot_summary(summary, tmp_path / "s.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000

    paths = write_report(summarize(hand_records()), tmp_path / "out", meta={"model_path": "m"})
    assert json.loads(paths["summary"].read_text())["meta"] == {"model_path": "m"}
    assert "| math500 |" in paths["table"].read_text() and paths["plot"].stat().st_size > 5000


def test_compare_and_plot_compare(tmp_path):
    base = summarize(hand_records(), k=4)
    better = [dict(r, outcome="correct") if r["dataset"] == "math500" else r for r in hand_records()]
    runs = {"base": base, "trained": summarize(better, k=4)}
    table = compare(runs)
    lines = table.splitlines()
    assert (
        lines[0]
        == "| dataset | base avg@4 | base pass@4 | trained avg@4 | trained pass@4 | Δ avg trained − base |"
    )
    assert "| math500 | 62.5 | 100.0 | 100.0 | 100.0 | +37.5 |" in lines
    assert "| aime24 | 25.0 | 100.0 | 25.0 | 100.0 | +0.0 |" in lines
    assert any(line.startswith("| **paper average** | – |") for line in lines)
    png = plot_compare(runs, tmp_path / "c.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_compare_evals_script(tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "compare_evals.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    for name, outcome in (("run_a", "wrong"), ("run_b", "correct")):
        records = [dict(r, outcome=outcome) if r["id"] == "p1" else r for r in hand_records()]
        (tmp_path / name).mkdir()
        summary = {**summarize(records, k=4), "meta": {"model_path": name, "k": 4}}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), "run_a", "run_b", "empty"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "empty: no summary.json" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(script), "run_a", "run_b", "--labels", "base,rl", "--out", "out/cmp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| math500 | 50.0 | 50.0 | 100.0 | 100.0 | +50.0 |" in proc.stdout
    assert (tmp_path / "out" / "cmp.md").read_text().strip() == proc.stdout.strip()
    assert (tmp_path / "out" / "cmp.png").read_bytes().startswith(PNG_MAGIC)
