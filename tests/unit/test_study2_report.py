"""scripts/study2_report.py: the pre-registered decisions of docs/study2.md on runs with known effects."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

_DIR = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(_DIR))
_spec = importlib.util.spec_from_file_location("study2_report", _DIR / "study2_report.py")
sr = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sr
_spec.loader.exec_module(sr)

STEPS = 20


def write_run(folder: Path, arm: str, seed: int, reward: float, lr: float = 3e-5, acc: float = 0.5) -> None:
    """A kept run: constant training reward `reward` at every step, held-out `acc` at steps 0, 10 and 20."""
    folder.mkdir(parents=True)
    cfg = {"algorithm": {"name": arm}, "learner": {"lr": lr}, "trainer": {"seed": seed, "total_steps": STEPS}}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    rows = [{"step": 0, sr.EVAL: acc}]
    for t in range(1, STEPS + 1):
        rows.append({"step": t, "reward/mean": reward, "response/length_mean": 50.0,
                     "verifier/first_error/step_1_rate": 0.5 - t / 50} | ({sr.EVAL: acc} if t in (10, 20) else {}))  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_decisions_follow_the_rule_and_the_pilot_fixes_the_lr(tmp_path, capsys):
    jitter = [0.004, -0.003, 0.002, -0.001, 0.003, -0.004, 0.001, -0.002]  # per seed, shared by the arms' d
    for seed in range(8):
        base = 0.4 + 0.02 * seed  # seeds differ; pairing removes it
        for order, gain in (("first", 0.10), ("last", 0.0)):  # λ helps only when the hard step is first
            write_run(tmp_path / order / f"g{seed}", "grpo", seed, base)
            write_run(tmp_path / order / f"m{seed}", "grpo_lambda_mean", seed, base + gain + jitter[seed])
            write_run(tmp_path / order / f"r{seed}", "grpo_lambda", seed, base - 0.05 + jitter[seed])
    for arm in ("grpo", "grpo_lambda_mean"):
        write_run(tmp_path / "pilot" / f"{arm}3", arm, 100, 0.95, lr=3e-5)
        write_run(tmp_path / "pilot" / f"{arm}1", arm, 100, 0.7, lr=1e-5)
    assert sr.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    first, last = report["primary"]
    assert first["n"] == last["n"] == 8
    assert first["decision"] == "supported" and abs(first["mean"] - 0.10) < 1e-9
    assert last["decision"].startswith("refuted at this scale") and abs(last["mean"]) < 1e-9
    interaction = report["secondary"][0]
    assert interaction["test"].startswith("interaction") and abs(interaction["mean"] - 0.10) < 1e-9
    assert interaction["p"] == 2 / 2**8 and len(report["secondary"]) == 10
    assert report["pilot"]["lr"] == 1e-5  # 3e-5 sits at the ceiling (0.95 > 0.90)
    assert sorted((r["arm"], r["lr"]) for r in report["pilot"]["runs"]) == sorted(
        (a, lr) for a in ("grpo", "grpo_lambda_mean") for lr in (3e-5, 1e-5)
    )  # the same arm and seed at two learning rates are two runs
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.md", "curves.png", "first_error.png"}
    assert "supported" in capsys.readouterr().out


def test_an_unfinished_study_says_so(tmp_path):
    write_run(tmp_path / "first" / "g0", "grpo", 0, 0.4)
    write_run(tmp_path / "first" / "m0", "grpo_lambda_mean", 0, 0.5)
    write_run(tmp_path / "pilot" / "g", "grpo", 100, 0.8)
    assert sr.main([str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["primary"][0]["decision"] == "not enough pairs yet (n = 1)"
    assert report["primary"][1]["decision"] == "not enough pairs yet (n = 0)"
    assert report["pilot"]["lr"] is None  # one 3e-5 run is not the rule's two
