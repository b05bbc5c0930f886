"""The credit toy gate (scripts/credit_toy.py): GRPO-λ as the paper runs it (ε-trace, `both`, token anchor,
λ = 0.99) must learn a reward decided by the first token faster than GRPO and one decided by the last token slower —
what its per-token credit c_k (≈ L − k) predicts — and a broken trace must fail the same check.

Measured with this test's settings (T = 24, hidden 48, 6 seeds, Adam 1e-3, 2026-12-07, ~9 s on 2 cores), steps to
90 % minus GRPO's, paired by seed, mean [95 % t-interval]:
    k* = 0:   paper −17.7 [−22.9, −12.4]   late (reversed trace) +61.8 [+48.7, +75.0]   lam0 (λ ignored) 0 [0, 0]
    k* = 23:  paper +78.7 [+58.1, +99.3]   late −9.2 [−12.8, −5.6]                      lam0 0 [0, 0]
The check asks for a t-interval clear of ±MARGIN steps on the right side at both positions: the paper's trace
passes, a trace run backwards in time fails on both sides, and a trace whose λ is ignored (GRPO) fails.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "credit_toy.py"
_spec = importlib.util.spec_from_file_location("credit_toy", _PATH)
ct = importlib.util.module_from_spec(_spec)
sys.modules["credit_toy"] = ct
_spec.loader.exec_module(ct)

T, MARGIN = 24, 5.0


def direction_holds(summary: dict, arm: str) -> bool:
    """Faster than GRPO when the first token decides, slower when the last does, each beyond MARGIN steps."""
    first, last = summary["0"][arm], summary[str(T - 1)][arm]
    return first["ci"][1] < -MARGIN and last["ci"][0] > MARGIN


@pytest.fixture(scope="module")
def summary():
    cfg = ct.ToyConfig(T=T, k_stars=[0, T - 1], hidden=48, groups=2, steps=120, lr=1e-3, seeds=list(range(6)),
                       arms=["grpo", "paper", "late", "lam0"])  # fmt: skip
    result = ct.run(cfg)
    assert all(s <= cfg.steps for per_k in result["steps_to_threshold"]["grpo"].values() for s in per_k)
    return ct.summarise(result)


def test_grpo_lambda_wins_early_and_loses_late(summary):
    assert direction_holds(summary, "paper"), summary


def test_a_reversed_trace_fails_the_gate(summary):
    assert not direction_holds(summary, "late")
    assert summary["0"]["late"]["ci"][0] > 0 and summary[str(T - 1)]["late"]["ci"][1] < 0  # the opposite


def test_an_ignored_lambda_fails_the_gate(summary):
    assert not direction_holds(summary, "lam0")
    assert summary["0"]["lam0"]["mean"] == 0 == summary[str(T - 1)]["lam0"]["mean"]  # exactly GRPO


def test_the_sweep_script_runs_end_to_end(tmp_path, capsys):
    """The CPU form of the GPU sweep in scripts/device_run.sh: λ-suffixed arms, named positions, JSON and PNG."""
    ct.main(["--T", "8", "--k-star", "0,quarter,mid,last", "--optimizers", "adam,sgd", "--seeds", "2",
             "--steps", "3", "--hidden", "8", "--groups", "1", "--log-every", "0", "--out", str(tmp_path),
             "--arms", "grpo,paper@0.9,mean@1,authors,late,lam0"])  # fmt: skip
    for optimizer in ("adam", "sgd"):
        result = json.loads((tmp_path / f"T8_{optimizer}.json").read_text())
        assert set(result["steps_to_threshold"]) == {"grpo", "paper@0.9", "mean@1", "authors", "late", "lam0"}
        assert set(result["vs_grpo"]) == {"0", "2", "4", "7"}
        assert all("p_holm" in row for per_k in result["vs_grpo"].values() for row in per_k.values())
        assert (tmp_path / f"T8_{optimizer}.png").stat().st_size > 0
    assert "paper@0.9" in capsys.readouterr().out
