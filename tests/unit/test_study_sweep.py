"""scripts/study_sweep.py: the plan, run names and the λ sweep's arm (the main stage's best GRPO-λ arm)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "study_sweep.py"
_spec = importlib.util.spec_from_file_location("study_sweep", _PATH)
ss = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ss
_spec.loader.exec_module(ss)

STEPS = 6


def write_run(results: Path, arm: str, seed: int, final: float, steps: int = STEPS) -> None:
    """A committed run copy (config.yaml + metrics.jsonl) whose last 5 rewards average `final`."""
    folder = results / ss.run_name(arm, {}, seed)
    folder.mkdir(parents=True)
    cfg = {"algorithm": {"name": arm, "lam": ss.LAMBDA.get(arm, 0.99)}, "learner": {"lr": ss.BASE_LR},
           "trainer": {"seed": seed, "total_steps": STEPS}}  # fmt: skip
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    rows = [{"step": t, "reward/mean": 0.0 if t == 1 else final} for t in range(1, steps + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main_stage(results: Path, finals: dict[str, float], skip: tuple[str, int] | None = None) -> None:
    for stage, arm, _, seed in ss.plan():
        if stage == "main" and (arm, seed) != skip:
            write_run(results, arm, seed, finals[arm] + 0.01 * seed)


def test_plan_runs_seed_by_seed_and_names_runs_like_the_preset():
    plan = ss.plan()
    assert [p[0] for p in plan].count("main") == 5 + 5 + 3 * 3 and len(plan) == 19 + 12 + 9
    assert [(a, s) for st, a, _, s in plan[:5]] == [(a, 0) for a in ss.MAIN_ARMS]  # seed 0 of every arm first
    assert ss.run_name("grpo", {}, 3) == "grpo_lam0.0_lr3e-05_s3"
    assert ss.run_name("grpo_lambda", {"learner.lr": "1e-4"}, 0) == "grpo_lambda_lam0.99_lr0.0001_s0"
    assert (
        ss.run_name("grpo_lambda_horizon", {"algorithm.lam": "0.9"}, 2)
        == "grpo_lambda_horizon_lam0.9_lr3e-05_s2"
    )


def test_lambda_arm_is_the_main_stages_best_grpo_lambda_arm(tmp_path):
    finals = {"grpo": 0.9, "grpo_lambda": 0.4, "grpo_lambda_recent": 0.45, "grpo_lambda_weight": 0.3,
              "grpo_lambda_horizon": 0.5}  # fmt: skip
    main_stage(tmp_path, finals)
    assert ss.best_lambda_arm(tmp_path) == "grpo_lambda_horizon"  # GRPO itself (0.9) is not a candidate
    write_run(tmp_path, "grpo_lambda_recent", 9, 0.99)  # not a main-stage run: not counted
    assert ss.best_lambda_arm(tmp_path) == "grpo_lambda_horizon"


def test_lambda_arm_needs_the_main_stage_complete(tmp_path):
    finals = dict.fromkeys(ss.MAIN_ARMS, 0.5)
    main_stage(tmp_path, finals, skip=("grpo_lambda_weight", 2))
    write_run(tmp_path, "grpo_lambda_weight", 2, 0.5, steps=STEPS - 1)  # incomplete
    with pytest.raises(
        SystemExit, match="1 main-stage runs are not complete .* grpo_lambda_weight_lam0.99_lr3e-05_s2"
    ):
        ss.best_lambda_arm(tmp_path)


_PATH2 = Path(__file__).resolve().parents[2] / "scripts" / "study2_sweep.py"
_spec2 = importlib.util.spec_from_file_location("study2_sweep", _PATH2)
s2 = importlib.util.module_from_spec(_spec2)
sys.modules[_spec2.name] = s2
_spec2.loader.exec_module(s2)


def test_study2_plan_pilot_first_then_balanced_seeds_and_names_like_the_preset():
    assert [st for st, *_ in s2.plan(None)] == ["pilot"] * 4  # no main run before the pilot fixes the lr
    plan = s2.plan(3e-5)
    main = [(a, e["data.arithmetic.hard_step"], s) for st, a, e, s in plan if st == "main"]
    assert len(main) == 2 * 3 * 8 and s2.PILOT_SEED not in s2.SEEDS
    for k in range(0, len(main), 6):  # every block of six: one seed, both orders, every arm
        assert {(a, o) for a, o, _ in main[k : k + 6]} == {(a, o) for a in s2.ARMS for o in s2.ORDERS}
        assert len({s for *_, s in main[k : k + 6]}) == 1
    assert s2.run_name("grpo", {"data.arithmetic.hard_step": "last", "learner.lr": "3e-05"}, 4) == (
        "last_grpo_lr3e-05_s4"
    )
    assert s2.run_name(
        "grpo_lambda_mean", {"data.arithmetic.hard_step": "first", "learner.lr": "1e-05"}, 100
    ) == ("first_grpo_lambda_mean_lr1e-05_s100")
