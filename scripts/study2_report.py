#!/usr/bin/env python
"""The second study's pre-registered analysis (docs/study2.md), in one command:

    python scripts/study2_report.py                       # docs/results/study2 -> docs/results/study2/report
    python scripts/study2_report.py RESULTS --out OUT

Reads the complete runs below RESULTS/pilot, RESULTS/first and RESULTS/last (config.yaml + metrics.jsonl, as
scripts/study2_sweep.py keeps them). Writes OUT/report.md (printed), report.json, curves.png (training reward per
arm and order, mean ± s.e. over seeds) and first_error.png (where responses first fail, per order, over training).

Per run: reward AUC = mean training reward over steps 1..N; acc@10, acc@20 = held-out greedy accuracy at steps 10
and 20; length = mean response length over the last 5 steps. Comparisons pair seeds (the seeds both arms have):
d_i = x_arm,i − x_GRPO,i, the 95 % paired t-interval and the exact sign-flip p (scripts/study_stats.py); Holm over
the primary family (2 orders) and over the secondary family (10 tests). Decision (primary): supported if the lower
bound > 0 and p_holm < 0.05; refuted at this scale if the upper bound < +0.03; inconclusive otherwise.
Pilot rule: lr 3e-5 unless the two 3e-5 pilot runs average > 0.90 training reward over steps 16-20, then 1e-5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study2_sweep import ARMS, ORDERS, RESULTS  # noqa: E402
from study_runs import Run, cfg_get, find_run_dirs, load_run, summarize_run  # noqa: E402
from study_stats import holm, sign_flip_p, t_interval  # noqa: E402

BASE, PRIMARY, RAW = "grpo", "grpo_lambda_mean", "grpo_lambda"
EVAL = "eval/arithmetic_eval/avg@1"
MARGIN = 0.03  # "refuted at this scale": GRPO-λ not even this much reward AUC better
CEILING, CEILING_STEPS = 0.90, range(16, 21)


def complete_runs(folder: Path) -> list[Run]:
    runs = [load_run(path) for path in (find_run_dirs([folder]) if folder.is_dir() else [])]
    return [r for r in runs if r.complete]


def load(folder: Path) -> dict[str, dict[int, Run]]:
    """Complete runs of `folder` by algorithm name, then seed (one learning rate per folder)."""
    arms: dict[str, dict[int, Run]] = {}
    for run in complete_runs(folder):
        arms.setdefault(cfg_get(run.config, "algorithm.name"), {})[run.seed] = run
    return arms


def endpoint(run: Run, name: str) -> float | None:
    if name in ("acc@10", "acc@20"):
        return run.rows.get(int(name[4:]), {}).get(EVAL)
    summary = summarize_run(run, "arithmetic_eval", last=5)
    return summary["auc_reward" if name == "auc" else "response_length"]


def differences(arm: dict[int, Run], base: dict[int, Run], name: str) -> dict[int, float]:
    """d per seed both arms have (and both have the endpoint)."""
    out = {}
    for seed in sorted(set(arm) & set(base)):
        a, b = endpoint(arm[seed], name), endpoint(base[seed], name)
        if a is not None and b is not None:
            out[seed] = a - b
    return out


def test(label: str, d: dict[int, float]) -> dict[str, Any]:
    values = list(d.values())
    ci = t_interval(values)
    return {"test": label, "n": len(values), "seeds": list(d), "mean": statistics.fmean(values) if values else None,
            "ci95": list(ci) if ci else None, "p": sign_flip_p(values) if len(values) >= 2 else None}  # fmt: skip


def decide(row: dict[str, Any]) -> str:
    if row["ci95"] is None:
        return f"not enough pairs yet (n = {row['n']})"
    if row["ci95"][0] > 0 and row["p_holm"] is not None and row["p_holm"] < 0.05:
        return "supported"
    return f"refuted at this scale (< +{MARGIN})" if row["ci95"][1] < MARGIN else "inconclusive"


def analyse(study: dict[str, dict[str, dict[int, Run]]]) -> dict[str, Any]:
    """The primary and secondary families of docs/study2.md over the main-stage runs."""
    arm = {(o, a): study.get(o, {}).get(a, {}) for o in ORDERS for a in ARMS}
    primary = [test(f"reward AUC, {PRIMARY} − {BASE}, {o}", differences(arm[o, PRIMARY], arm[o, BASE], "auc"))
               for o in ORDERS]  # fmt: skip
    secondary = []
    for lam in (PRIMARY, RAW):
        d = {o: differences(arm[o, lam], arm[o, BASE], "auc") for o in ORDERS}
        both = sorted(set(d["first"]) & set(d["last"]))
        secondary.append(test(f"interaction (first − last), reward AUC, {lam} − {BASE}",
                              {s: d["first"][s] - d["last"][s] for s in both}))  # fmt: skip
    secondary += [
        test(f"reward AUC, {RAW} − {BASE}, {o}", differences(arm[o, RAW], arm[o, BASE], "auc"))
        for o in ORDERS
    ]
    secondary += [test(f"held-out {e}, {PRIMARY} − {BASE}, {o}", differences(arm[o, PRIMARY], arm[o, BASE], e))
                  for e in ("acc@10", "acc@20") for o in ORDERS]  # fmt: skip
    secondary += [test(f"response length, {PRIMARY} − {BASE}, {o}",
                       differences(arm[o, PRIMARY], arm[o, BASE], "length")) for o in ORDERS]  # fmt: skip
    for family in (primary, secondary):
        for row, p in zip(family, holm([r["p"] for r in family])):
            row["p_holm"] = p
    for row in primary:
        row["decision"] = decide(row)
    arms = {f"{o}/{a}": {e: [endpoint(r, e) for r in runs.values()] for e in ("auc", "acc@10", "acc@20", "length")}
            | {"seeds": sorted(runs)} for (o, a), runs in arm.items()}  # fmt: skip
    return {"primary": primary, "secondary": secondary, "arms": arms}


def pilot(runs: list[Run]) -> dict[str, Any]:
    """The pilot's runs and the learning rate its rule fixes (None until both 3e-5 runs are complete)."""
    rows = []
    for run in sorted(
        runs, key=lambda r: (-cfg_get(r.config, "learner.lr"), cfg_get(r.config, "algorithm.name"))
    ):
        rewards = {s: run.rows[s].get("reward/mean") for s in run.training_steps()}
        lengths = [run.rows[s].get("response/length_mean") for s in run.training_steps()]
        rows.append({"arm": cfg_get(run.config, "algorithm.name"), "lr": cfg_get(run.config, "learner.lr"),
                     "auc": endpoint(run, "auc"), "reward_step1": rewards.get(1),
                     "reward_16_20": statistics.fmean(rewards[s] for s in CEILING_STEPS if rewards.get(s) is not None),
                     "min_length": min(x for x in lengths if x is not None),
                     "acc@0": run.rows.get(0, {}).get(EVAL), "acc@20": endpoint(run, "acc@20")})  # fmt: skip
    at3 = [r["reward_16_20"] for r in rows if r["lr"] == 3e-5]
    lr = None if len(at3) < 2 else (1e-5 if statistics.fmean(at3) > CEILING else 3e-5)
    return {"runs": rows, "lr": lr, "mean_reward_16_20_at_3e-5": statistics.fmean(at3) if at3 else None}


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:+.{digits}f}" if isinstance(x, float) else str(x)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Second study: report (docs/study2.md)", "", "## Pilot (seed 100)", "",
             "| arm | lr | reward AUC | reward step 1 | reward 16-20 | min length | held-out @0 | @20 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in report["pilot"]["runs"]:
        lines.append(f"| {r['arm']} | {r['lr']:g} | " + " | ".join(
            "–" if r[k] is None else f"{r[k]:.3f}" for k in ("auc", "reward_step1", "reward_16_20", "min_length",
                                                             "acc@0", "acc@20")) + " |")  # fmt: skip
    lines += ["", f"Pilot rule: lr = {report['pilot']['lr']} (mean training reward over steps 16-20 at 3e-5: "
              f"{_fmt(report['pilot']['mean_reward_16_20_at_3e-5'])}; 1e-5 if above {CEILING})", ""]  # fmt: skip
    for title, key in (("Primary", "primary"), ("Secondary (Holm over the family)", "secondary")):
        lines += [f"## {title}", "", "| test | n | mean d | 95 % paired t | sign-flip p | Holm p |"
                  + (" decision |" if key == "primary" else ""),
                  "|---|---:|---:|---|---:|---:|" + ("---|" if key == "primary" else "")]  # fmt: skip
        for r in report[key]:
            ci = "–" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
            p = "–" if r["p"] is None else f"{r['p']:.3g}"
            ph = "–" if r["p_holm"] is None else f"{r['p_holm']:.3g}"
            lines.append(f"| {r['test']} | {r['n']} | {_fmt(r['mean'])} | {ci} | {p} | {ph} |"
                         + (f" **{r['decision']}** |" if key == "primary" else ""))  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def plots(study: dict[str, dict[str, dict[int, Run]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for fname, keys in (("curves.png", None), ("first_error.png", "verifier/first_error/")):
        fig, axes = plt.subplots(1, len(ORDERS), figsize=(12, 4), sharey=True)
        for ax, order in zip(axes, ORDERS):
            for arm in ARMS if keys is None else (BASE,):
                runs = list(study.get(order, {}).get(arm, {}).values())
                names = ["reward/mean"] if keys is None else sorted(
                    {k for r in runs for row in r.rows.values() for k in row if k.startswith(keys)})  # fmt: skip
                for name in names:
                    steps = sorted({s for r in runs for s in r.training_steps()})
                    mean = [statistics.fmean(v) if (v := [r.rows[s][name] for r in runs if name in r.rows.get(s, {})])
                            else 0.0 for s in steps]  # fmt: skip  # a place not logged at a step: no failure there
                    label = arm if keys is None else name.removeprefix(keys).removesuffix("_rate")
                    ax.plot(steps, mean, label=f"{label} (n={len(runs)})" if keys is None else label)
            ax.set_title(f"hard step {order}")
            ax.set_xlabel("training step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        axes[0].set_ylabel(
            "training reward" if keys is None else f"{BASE}: share of responses first failing at"
        )
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="?", type=Path, default=RESULTS, help="the study's results folder")
    p.add_argument("--out", type=Path, help="output folder (default: <results>/report)")
    args = p.parse_args(argv)
    study = {o: load(args.results / o) for o in ORDERS}
    report = {"pilot": pilot(complete_runs(args.results / "pilot"))} | analyse(study)
    out = args.out or args.results / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(report)
    (out / "report.md").write_text(text + "\n")
    plots(study, out)
    print(text)
    print(f"wrote {out}/report.md, report.json, curves.png, first_error.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
