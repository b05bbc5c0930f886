#!/usr/bin/env python
"""Run the second CPU study (docs/study2.md, pre-registered) resumably, across sessions and machines.

    python scripts/study2_sweep.py --list          # the plan, with what is done
    python scripts/study2_sweep.py --stage pilot   # the pilot / learning-rate sweep (seed 100, outside the study)
    python scripts/study2_sweep.py                 # every pending run, in order

Every run is `python -m grpo_lambda.train -m experiment=cpu_study2 algorithm=A data.arithmetic.hard_step=V
learner.lr=LR trainer.seed=S` in its own folder runs/study2/<V>_<A>_lr<LR>_s<S>; complete runs are copied to
docs/results/study2/<pilot|first|last>/<name>/ (config.yaml, metrics.jsonl, summary.json, batches.jsonl), which
the report reads (one folder per order: scripts/study_report.py groups runs into arms by algorithm only).
The main stage runs seed by seed (both orders, every arm, then the next seed), so an unfinished study is balanced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_sweep import REPO, is_complete, keep_results, launch  # noqa: E402

RESULTS = REPO / "docs" / "results" / "study2"
RUNS = REPO / "runs" / "study2"
EXPERIMENT = "cpu_study2"

ARMS = (
    "grpo",
    "grpo_lambda_mean",
    "grpo_lambda",
)  # GRPO; GRPO-λ length-neutral (primary); as the paper runs it
ORDERS = ("first", "last")  # data.arithmetic.hard_step: where the one hard step of each sum stands
SEEDS = tuple(range(8))
PILOT_SEED = 100  # never a study seed
PILOT_ARMS = ("grpo", "grpo_lambda_mean")
PILOT_LRS = (3.0e-5, 1.0e-5)
MAIN_LR: float | None = (
    1.0e-5  # fixed by the pilot's rule (docs/study2.md): its 3e-5 runs averaged 0.923 > 0.90
)


def plan(main_lr: float | None = MAIN_LR) -> list[tuple[str, str, dict[str, str], int]]:
    """(stage, algorithm, overrides, seed) in the order they should run; the main stage once its lr is fixed."""
    runs = [("pilot", arm, {"data.arithmetic.hard_step": "first", "learner.lr": f"{lr:g}"}, PILOT_SEED)
            for lr in PILOT_LRS for arm in PILOT_ARMS]  # fmt: skip
    if main_lr is not None:
        runs += [("main", arm, {"data.arithmetic.hard_step": order, "learner.lr": f"{main_lr:g}"}, seed)
                 for seed in SEEDS for order in ORDERS for arm in ARMS]  # fmt: skip
    return runs


def results_folder(stage: str, extra: dict[str, str]) -> Path:
    """Where a complete run is kept: the pilot's together, the main stage's by order."""
    return RESULTS / ("pilot" if stage == "pilot" else extra["data.arithmetic.hard_step"])


def run_name(arm: str, extra: dict[str, str], seed: int) -> str:
    """The name conf/experiment/cpu_study2.yaml gives the run: <hard_step>_<algorithm.name>_lr<lr>_s<seed>."""
    return f"{extra['data.arithmetic.hard_step']}_{arm}_lr{float(extra['learner.lr'])}_s{seed}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("pilot", "main"), action="append", help="only these stages")
    p.add_argument("--max-runs", type=int, default=None, help="stop after launching this many runs")
    p.add_argument("--list", action="store_true", help="print the plan and what is done, then exit")
    p.add_argument(
        "extra", nargs="*", help="overrides added to every run (e.g. trainer.total_steps=2 for a try)"
    )
    args = p.parse_args()
    if MAIN_LR is None and args.stage and "main" in args.stage:
        raise SystemExit(
            "study2_sweep: the main stage's learning rate is fixed by the pilot (docs/study2.md)"
        )
    todo = []
    for stage, arm, extra, seed in plan():
        if args.stage and stage not in args.stage:
            continue
        name, results = run_name(arm, extra, seed), results_folder(stage, extra)
        done = is_complete(results / name) or keep_results(name, RUNS, results)
        if args.list:
            print(f"{stage:6s} {name:45s} {'done' if done else 'pending'}")
        elif not done:
            todo.append(((arm, extra, seed, name), results))
    for run, results in [] if args.list else todo[: args.max_runs]:
        launch([run], EXPERIMENT, args.extra, RUNS, results)


if __name__ == "__main__":
    main()
