"""Report a seeded study (GRPO vs GRPO-λ arms): curves, a table per arm, paired comparisons with the baseline.

    .venv/bin/python scripts/study_report.py runs/study                      # a Hydra multirun's output_dir
    .venv/bin/python scripts/study_report.py docs/results/study --out docs/results/study/report
    .venv/bin/python scripts/study_report.py A B --baseline grpo --metric-eval arithmetic_eval --last 5

Every folder below the given ones that holds both ``config.yaml`` and ``metrics.jsonl`` is a run (a trainer run
folder, or a copy of its config.yaml + metrics.jsonl [+ summary.json]). Runs are grouped into arms by their
config: ``algorithm.name`` and the fields (trace_style, trace_anchor, policy_loss, eligibility_grad, lam, lr);
the runs of one arm differ only in ``trainer.seed``. The label is the name plus, where arms of one name differ,
the differing fields, e.g. ``grpo_lambda (lr=3e-05)``. A run with fewer training steps than
``trainer.total_steps`` is incomplete: left out of every number, listed in the output. In metrics.jsonl the last
line of a step wins (a resumed run may repeat steps).

Per run (``L`` = ``--last``; r_t = reward/mean at training step t = 1..N; "last L" = the last L steps holding
the metric):
    final_reward      = mean(r_t over the last L steps)
    auc_reward        = mean(r_t over all N steps)   (area under the reward curve per step)
    acc_start / acc_final = eval/<set>/avg@1 at the first / last evaluated step (held-out greedy accuracy)
    acc_mean_after_start  = mean(eval/<set>/avg@1 over the evaluations after the first)   (steps 5-20 of 0-20)
    response_length   = mean(response/length_mean over the last L steps)
    kl                = mean(learner/kl over the last L steps)  (logged only when algorithm.kl_coef > 0)
    clip_frac         = mean(learner/clip_frac over all steps)
    grad_norm_median  = median(learner/grad_norm over all steps)
    clipped_frac      = #{t: grad_norm_t > learner.grad_clip} / #{t with a grad norm}   (0 when grad_clip <= 0)
    wall_time_s       = sum(time/step_s over all steps)
Per arm, every per-run number is given as mean ± s.e. over seeds: s.e. = sd / sqrt(n), sd with ddof = 1.
Curves: per step the mean over the seeds that logged it, band = ± s.e.
Steps to reach the baseline's final reward: target = mean over baseline seeds of final_reward; the arm's
seed-mean reward curve m_t is smoothed by an L-step trailing mean s_t = mean(m_{t-L+1..t}) (full windows only);
the answer is the first step t with s_t >= target, else "not reached".
The baseline (``--baseline``) is the arm with that exact label, or the arm of that algorithm.name; when several
arms share the name (a learning-rate sweep), the one with the highest mean final_reward (training reward, not the
held-out metric) is taken and the report says so.

Comparison of each arm with the baseline on acc_final and auc_reward: seeds are paired by trainer.seed (seeds
both arms have); d_i = x_arm,i - x_base,i, n pairs; difference = mean(d); 95 % CI = the paired t-interval
mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n) (sd with ddof 1; from 2 pairs); p = the exact two-sided sign-flip
p-value #{s ∈ {±1}^n : |Σ s_i d_i| >= |Σ d_i|} / 2^n (all 2^n assignments; its smallest value is 2 / 2^n: 0.25 at
n = 3, 0.0625 at n = 5). Without common seeds: unpaired, the Welch t-interval and the exact permutation p-value of
mean(a) - mean(b) over every split of the pooled values, sd(d) = sqrt(sd_a^2 + sd_b^2). Holm's step-down correction
runs over one family: every distinct (arm, baseline, metric) comparison of the report (the rows with the baseline
and the equal-value rows below); p_holm is reported beside p. The intervals are per comparison (not adjusted).
Power (two-sided α = 0.05, power 0.8, t-test): pairs (per arm, unpaired) needed to detect a difference δ: the
smallest n >= ((t_{1-α/2, ν} + t_{power, ν}) * sd(d) / δ)^2, ν = n - 1 (unpaired 2n - 2), for δ = the observed
difference and δ = ``--delta`` (default 0.03: the paper's +3 points of accuracy). (The sign-flip test needs >= 6
pairs to reach p < 0.05 at all.)
Post hoc (exploratory, outside the Holm family): held-out accuracy at every evaluation after the first, and its
mean over those (acc_mean_after_start), each arm of curves.png minus the baseline, paired by seed as above; pooled
over those arms, the count of pairs below / level / above (pairs share the baseline's seeds: no interval).

Sweeps: arms of one algorithm.name that differ only in lr or only in lam form a sweep; per sweep a table of the
swept value against final_reward, auc_reward, acc_final, grad_norm_median and clipped_frac, its best value (the
highest mean final_reward, the baseline's rule) marked, each algorithm at its best lr compared with the
baseline (the comparison rows of that arm), and each swept algorithm minus the baseline's algorithm at every value
both were run at (final_reward and acc_final, paired by seed, the same t-interval and sign-flip p): GRPO-λ − GRPO at
each lr.

Writes into ``--out`` (default ``<first folder>/report``): curves.png, table.md, comparison.md (both printed),
runs.jsonl (one line per run: the raw numbers behind the table) and report.json (everything); where there are
sweeps also sweeps.md (printed), sweeps.png and sweep_curves.png (every point's curves, a row per sweep), and
curves.png then draws each swept algorithm at its main setting only (the swept value with the most seeds; ties:
the best), so that it stays readable; the table has every arm.
Runs are loaded and summarised by study_runs.py, compared by study_compare.py, drawn by study_render.py; the
statistics are study_stats.py (all beside this file).
Only numpy, matplotlib (Agg) and the standard library (+ PyYAML, already a dependency) are used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # study_render beside this file, however it is loaded
from study_compare import (  # noqa: E402  (comparing arms)
    MIN_SEEDS_FOR_CI,
    choose_baseline,
    compare,
    curve_arms,
    equal_value_comparisons,
    find_sweeps,
    holm_family,
    posthoc_heldout,
)
from study_render import (  # noqa: E402
    COMPARED,
    TABLE_COLUMNS,
    comparison_markdown,
    plot_curves,
    plot_sweep_curves,
    plot_sweeps,
    sweeps_markdown,
    table_markdown,
)
from study_runs import (  # noqa: E402  (loading and per-run numbers; re-exported for the study scripts)
    LABEL_FIELDS,
    REWARD,
    Run,
    arm_key,
    arm_labels,
    find_run_dirs,
    load_run,
    mean_curve,
    seed_order,
    summarize_run,
    varying_fields,
)
from study_stats import (  # noqa: E402
    mean_se,
    steps_to_reach,
)

ALPHA, POWER = 0.05, 0.8


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


# --------------------------------------------------------------------------------------------- assembly


def build_report(folders: list[Path], args: argparse.Namespace) -> tuple[dict[str, Any], list[Run]]:
    """Load every run, group arms, compute all numbers; returns the report dict and the complete runs."""
    runs, skipped = [], []
    for d in find_run_dirs(folders):
        try:
            runs.append(load_run(d))
        except (OSError, yaml.YAMLError) as e:
            skipped.append({"run_dir": str(d), "reason": f"unreadable: {e}"})
    keys = list(dict.fromkeys(arm_key(r.config) for r in runs))
    labels = arm_labels(keys)
    for r in runs:
        r.arm, r.label = arm_key(r.config), labels[arm_key(r.config)]
        r.summary = summarize_run(r, args.metric_eval, args.last)

    arms: dict[str, list[Run]] = {}
    incomplete = []
    for r in sorted(runs, key=lambda r: (keys.index(r.arm), seed_order(r.seed), str(r.path))):
        if not r.complete:
            incomplete.append({"run_dir": str(r.path), "arm": r.label, "seed": r.seed,
                               "steps": r.summary["steps"], "total_steps": r.total_steps})  # fmt: skip
        elif any(o.seed == r.seed for o in arms.get(r.label, [])):
            skipped.append(
                {"run_dir": str(r.path), "reason": f"a second run of {r.label} with seed {r.seed}"}
            )
        else:
            arms.setdefault(r.label, []).append(r)
    complete = [r for rs in arms.values() for r in rs]

    base_label, note = choose_baseline(arms, args.baseline) if arms else (None, "no complete runs")
    baseline = None  # the report's "baseline_note" says why when there is none
    if base_label is not None:
        target = mean_se([r.summary["final_reward"] for r in arms[base_label]])["mean"]
        baseline = {"label": base_label, "target_reward": target, "note": note}

    arm_out = []
    for label, rs in arms.items():
        reward_curve = mean_curve(rs, REWARD, "train")
        reach = None
        if baseline and baseline["target_reward"] is not None:
            reach = steps_to_reach(
                reward_curve["step"], reward_curve["mean"], baseline["target_reward"], args.last
            )
        arm_out.append({
            "label": label,
            "fields": dict(zip(["name", *LABEL_FIELDS], rs[0].arm)),
            "n": len(rs),
            "seeds": [r.seed for r in rs],
            "runs": [str(r.path) for r in rs],
            "stats": {k: mean_se([r.summary[k] for r in rs]) for k in TABLE_COLUMNS},
            "steps_to_baseline_final": reach,
            "curves": {"reward": reward_curve, "eval": mean_curve(rs, f"eval/{args.metric_eval}/avg@1", "all")},
        })  # fmt: skip

    comparisons = []
    if baseline:
        for label, rs in arms.items():
            if label == base_label:
                continue
            for metric in COMPARED:
                c = compare(rs, arms[base_label], metric, args.seed, args.delta)
                comparisons.append({"arm": label, "baseline": base_label, **c})

    sweeps = find_sweeps(arm_out)
    equal_value = []
    if baseline:
        base_name = next(a["fields"]["name"] for a in arm_out if a["label"] == base_label)
        equal_value = equal_value_comparisons(sweeps, arms, base_name, args)
    holm_m = holm_family(comparisons, equal_value)
    drawn = curve_arms(arm_out, sweeps)
    posthoc = None
    if baseline:
        others = [lab for lab in drawn if lab != base_label]
        posthoc = posthoc_heldout(arms, others, base_label, f"eval/{args.metric_eval}/avg@1", args.seed)

    report = {
        "settings": {
            "folders": [str(f) for f in folders],
            "baseline": args.baseline,
            "eval_set": args.metric_eval,
            "last": args.last,
            "seed": args.seed,
            "delta": args.delta,
            "alpha": ALPHA,
            "power": POWER,
            "interval": "95 % paired t-interval (unpaired: Welch), per comparison",
            "test": "exact two-sided sign-flip p (unpaired: exact permutation p)",
            "holm_family": "every distinct (arm, baseline, metric) row of comparisons and equal_value_comparisons",
            "holm_m": holm_m,
            "min_seeds_for_ci": MIN_SEEDS_FOR_CI,
        },
        "baseline": baseline,
        "baseline_note": note,
        "arms": arm_out,
        "comparisons": comparisons,
        "sweeps": sweeps,
        "curve_arms": drawn,
        "equal_value_comparisons": equal_value,
        "posthoc_heldout": posthoc,
        "incomplete": incomplete,
        "skipped": skipped,
        "config_differences": varying_fields(complete),
    }
    return report, complete


def run_record(r: Run) -> dict[str, Any]:
    """One runs.jsonl line."""
    return {"run_dir": str(r.path), "arm": r.label, "seed": r.seed, **r.summary}


def write_outputs(report: dict[str, Any], runs: list[Run], out: Path) -> tuple[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    table, comparison = table_markdown(report), comparison_markdown(report)
    (out / "table.md").write_text(table, encoding="utf-8")
    (out / "comparison.md").write_text(comparison, encoding="utf-8")
    (out / "runs.jsonl").write_text(
        "".join(json.dumps(_json_safe(run_record(r))) + "\n" for r in runs), encoding="utf-8"
    )
    full = {**report, "runs": [run_record(r) for r in runs]}
    (out / "report.json").write_text(json.dumps(_json_safe(full), indent=1) + "\n", encoding="utf-8")
    plot_curves(report, out / "curves.png")
    if report["sweeps"]:
        (out / "sweeps.md").write_text(sweeps_markdown(report), encoding="utf-8")
        plot_sweeps(report, out / "sweeps.png")
        plot_sweep_curves(report, out / "sweep_curves.png")
    else:  # none left from an earlier report into this folder
        for name in ("sweeps.md", "sweeps.png", "sweep_curves.png"):
            (out / name).unlink(missing_ok=True)
    return table, comparison


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="folders searched recursively for run folders")
    p.add_argument("--out", type=Path, help="output folder (default: <first folder>/report)")
    p.add_argument(
        "--baseline", default="grpo", help="baseline arm: a label or an algorithm.name (default grpo)"
    )
    p.add_argument(
        "--metric-eval", default="arithmetic_eval", help="held-out eval set name (default arithmetic_eval)"
    )
    p.add_argument(
        "--last", type=int, default=5, help="steps averaged for final numbers, smoothing window (default 5)"
    )
    # --bootstrap B is accepted and ignored: the percentile bootstrap is gone (study_sweep.py still passes it)
    p.add_argument("--bootstrap", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the Monte Carlo p-values beyond 20 pairs (default 0)"
    )
    p.add_argument(
        "--delta", type=float, default=0.03, help="effect size for the power estimate (default 0.03)"
    )
    args = p.parse_args(argv)
    if args.last < 1:
        p.error("--last must be >= 1")
    for f in args.folders:
        if not f.is_dir():
            p.error(f"{f} is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, runs = build_report(args.folders, args)
    if not runs and not report["incomplete"]:
        print(
            f"study_report: no run folders (config.yaml + metrics.jsonl) below {args.folders}",
            file=sys.stderr,
        )
        return 2
    out = args.out if args.out is not None else args.folders[0] / "report"
    table, comparison = write_outputs(report, runs, out)
    print(table)
    print(comparison)
    if report["sweeps"]:
        print(sweeps_markdown(report))
    extra = ", sweeps.md, sweeps.png, sweep_curves.png" if report["sweeps"] else ""
    print(f"wrote {out}/curves.png, table.md, comparison.md, runs.jsonl, report.json{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
