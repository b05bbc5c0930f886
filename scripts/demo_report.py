"""Summarise a run's learning from its metrics.jsonl: reward at the start vs the end, held-out accuracy, time.

    python scripts/demo_report.py runs/cpu_demo_grpo_lambda          # after `make demo`
    python scripts/demo_report.py RUN_DIR --window 5 --json out.json

Measures only; prints a table (and optionally JSON). The README's demo numbers come from this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def load_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass the run folder (trainer.output_dir/trainer.run_name)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(rows: list[dict], window: int) -> dict:
    train = [r for r in rows if r.get("reward/mean") is not None]
    rewards = [r["reward/mean"] for r in train]
    evals = [(r["step"], v) for r in rows for k, v in r.items() if k.endswith("/avg@1") and v is not None]
    step_times = [r["time/step_s"] for r in train if r.get("time/step_s") is not None]
    out = {
        "steps": len(train),
        "reward_first": statistics.fmean(rewards[:window]) if rewards else None,
        "reward_last": statistics.fmean(rewards[-window:]) if rewards else None,
        "eval_first": evals[0] if evals else None,
        "eval_last": evals[-1] if evals else None,
        "step_s_mean": statistics.fmean(step_times) if step_times else None,
        "train_min": sum(step_times) / 60 if step_times else None,
    }
    for phase in ("generate", "reward", "sleep", "old_logp", "ref_logp", "update", "wake", "sync"):
        vals = [r.get(f"time/{phase}_s") for r in train if r.get(f"time/{phase}_s") is not None]
        out[f"{phase}_s_mean"] = statistics.fmean(vals) if vals else None
    if out["reward_first"] is not None:
        out["reward_gain"] = out["reward_last"] - out["reward_first"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--window", type=int, default=3, help="steps averaged at each end (default 3)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    r = report(load_rows(args.run_dir), args.window)
    w = args.window
    print(
        f"run {args.run_dir}: {r['steps']} steps, {r['train_min']:.1f} min of training, {r['step_s_mean']:.1f} s/step"
    )
    print(f"  reward/mean   first {w} steps {r['reward_first']:.3f} -> last {w} steps {r['reward_last']:.3f}"
          f"   ({r['reward_gain']:+.3f})")  # fmt: skip
    if r["eval_first"]:
        (s0, e0), (s1, e1) = r["eval_first"], r["eval_last"]
        print(
            f"  held-out greedy accuracy (avg@1)  step {s0}: {e0:.3f} -> step {s1}: {e1:.3f}   ({e1 - e0:+.3f})"
        )
    phases = " | ".join(
        f"{k[:-7]} {r[k]:.1f}s" for k in r if k.endswith("_s_mean") and k != "step_s_mean" and r[k]
    )
    print(f"  mean time per step by phase: {phases}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
