#!/usr/bin/env python
"""Run the CPU study (docs/study.md) as Hydra multirun sweeps, resumably, across sessions and machines.

    python scripts/study_sweep.py                 # every pending run of the plan, in priority order
    python scripts/study_sweep.py --list          # the plan, with what is done
    python scripts/study_sweep.py --stage main --max-runs 3

Each call of the plan is `python -m grpo_lambda.train -m experiment=cpu_study algorithm=A trainer.seed=S,S' [...]`
(one Hydra multirun per group of runs that differ only in the seed); every run has its own folder
runs/study/<run_name> and resumes there if killed. When a run is complete, its small files (config.yaml,
metrics.jsonl, summary.json, batches.jsonl) are copied to docs/results/study/<run_name>/, which is what the report
reads and what a later session finds done (run folders, with their checkpoints, stay out of git).

Priority: the main arms seed by seed (seed 0 of every arm, then seed 1 ...), then the learning-rate sweep of GRPO and
GRPO-λ, then the λ sweep of the best GRPO-λ arm of the main stage (``--lambda-arm auto``: the highest mean final
training reward, study_report's rule for a best arm; it needs the main stage complete).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "study"
RUNS = REPO / "runs" / "study"
KEEP = ("config.yaml", "metrics.jsonl", "summary.json", "batches.jsonl")

MAIN_ARMS = ("grpo", "grpo_lambda", "grpo_lambda_recent", "grpo_lambda_weight", "grpo_lambda_horizon")
LAMBDA = {"grpo": 0.0}  # the algorithm group's λ (run names carry it); every other arm: 0.99
BASE_LR = 3.0e-5
SWEEP_LRS = (1.0e-5, 1.0e-4)
SWEEP_LAMS = (0.0, 0.9, 1.0)


def plan() -> list[tuple[str, str, dict[str, str], int]]:
    """(stage, algorithm, extra overrides, seed) in the order they should run."""
    runs = []
    for seed in range(5):
        for arm in MAIN_ARMS:
            if seed < 3 or arm in ("grpo", "grpo_lambda"):
                runs.append(("main", arm, {}, seed))
    for seed in range(3):
        for arm in ("grpo", "grpo_lambda"):
            for lr in SWEEP_LRS:
                runs.append(("lr", arm, {"learner.lr": f"{lr:g}"}, seed))
    for seed in range(3):
        for lam in SWEEP_LAMS:
            runs.append(("lambda", "grpo_lambda", {"algorithm.lam": f"{lam:g}"}, seed))
    return runs


def run_name(arm: str, extra: dict[str, str], seed: int) -> str:
    """The name conf/experiment/cpu_study.yaml gives the run: <algorithm.name>_lam<λ>_lr<lr>_s<seed>."""
    lam = float(extra.get("algorithm.lam", LAMBDA.get(arm, 0.99)))
    lr = float(extra.get("learner.lr", BASE_LR))
    return f"{arm}_lam{lam}_lr{lr}_s{seed}"


def best_lambda_arm(results: Path = RESULTS) -> str:
    """The GRPO-λ arm of the main stage with the highest mean final training reward (study_report.py's rule for a
    best arm, over the complete main-stage runs in `results`). SystemExit while the main stage is incomplete."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import study_report

    main = [(arm, seed) for stage, arm, _, seed in plan() if stage == "main"]
    missing = [run_name(a, {}, s) for a, s in main if not is_complete(results / run_name(a, {}, s))]
    if missing:
        raise SystemExit(
            f"study_sweep: the λ sweep's arm is the main stage's best, and {len(missing)} main-stage runs are not "
            f"complete in {results} (first: {missing[0]}): run the main stage first or name one with --lambda-arm"
        )
    args = study_report.parse_args([str(results), "--bootstrap", "100"])
    report, _ = study_report.build_report([results / run_name(a, {}, s) for a, s in main], args)
    candidates = [a for a in report["arms"] if a["fields"]["name"] != "grpo"]
    return max(candidates, key=lambda a: a["stats"]["final_reward"]["mean"])["fields"]["name"]


def is_complete(folder: Path) -> bool:
    """A run folder (or its copy) whose metrics reach trainer.total_steps."""
    metrics, config = folder / "metrics.jsonl", folder / "config.yaml"
    if not metrics.is_file() or not config.is_file():
        return False
    import yaml

    total = yaml.safe_load(config.read_text())["trainer"]["total_steps"]
    steps = set()
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "reward/mean" in row:
            steps.add(row["step"])
    return len(steps) >= total


def keep_results(name: str, runs: Path = RUNS, results: Path = RESULTS) -> bool:
    """Copy a complete run's small files into docs/results/study/<name>/; True if it is complete."""
    src = runs / name
    if not is_complete(src):
        return False
    dst = results / name
    dst.mkdir(parents=True, exist_ok=True)
    for file in KEEP:
        if (src / file).is_file():
            shutil.copyfile(src / file, dst / file)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("main", "lr", "lambda"), action="append", help="only these stages")
    p.add_argument("--max-runs", type=int, default=None, help="stop after launching this many runs")
    p.add_argument("--list", action="store_true", help="print the plan and what is done, then exit")
    p.add_argument("--lambda-arm", default="auto",
                   help="the arm the λ sweep uses (default auto: the main stage's best GRPO-λ arm)")  # fmt: skip
    p.add_argument(
        "extra", nargs="*", help="overrides added to every run (e.g. trainer.total_steps=2 for a try)"
    )
    args = p.parse_args()

    todo = []
    lambda_arm = args.lambda_arm
    for stage, arm, extra, seed in plan():
        if args.stage and stage not in args.stage:
            continue
        if stage == "lambda":
            if lambda_arm == "auto":
                lambda_arm = best_lambda_arm()
                print(f"[study] the λ sweep runs {lambda_arm}: the main stage's best GRPO-λ arm", flush=True)
            arm = lambda_arm
        name = run_name(arm, extra, seed)
        done = is_complete(RESULTS / name) or keep_results(name)
        if args.list:
            print(f"{stage:7s} {name:45s} {'done' if done else 'pending'}")
        elif not done:
            todo.append((arm, extra, seed, name))
    if args.list:
        return
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    launch(todo, "cpu_study", args.extra)


def launch(todo, experiment: str, extra_args, runs: Path = RUNS, results: Path = RESULTS) -> None:
    """Run `todo` ((algorithm, overrides, seed, run name), in order) as one Hydra multirun per group of consecutive
    runs that differ only in the seed; copy each complete run to `results`; stop at the first failing group."""
    groups: list[tuple[str, dict[str, str], list[int], list[str]]] = []
    for arm, extra, seed, name in todo:
        if groups and groups[-1][0] == arm and groups[-1][1] == extra:
            groups[-1][2].append(seed)
            groups[-1][3].append(name)
        else:
            groups.append((arm, extra, [seed], [name]))
    for arm, extra, seeds, names in groups:
        cmd = [sys.executable, "-m", "grpo_lambda.train", "-m", f"experiment={experiment}", f"algorithm={arm}",
               f"trainer.seed={','.join(map(str, seeds))}", *(f"{k}={v}" for k, v in extra.items()), *extra_args]  # fmt: skip
        print(f"[study] {time.strftime('%H:%M:%S')} {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.call(cmd, cwd=REPO)
        kept = [n for n in names if keep_results(n, runs, results)]
        print(
            f"[study] {time.strftime('%H:%M:%S')} rc={rc}; complete: {', '.join(kept) or 'none'}", flush=True
        )
        if rc != 0:
            raise SystemExit(rc)


if __name__ == "__main__":
    main()
