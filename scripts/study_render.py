"""The study report's output: markdown tables (per arm, paired comparisons, sweeps) and figures (curves, sweeps).

Pure rendering of the report dict that study_report.build_report assembles (study_report.py's docstring says what
every number means); numpy and matplotlib (Agg) only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# per-run numbers shown in the table: key -> (column title, digits)
TABLE_COLUMNS = {
    "final_reward": ("final reward (last L)", 3),
    "auc_reward": ("reward AUC (mean/step)", 3),
    "acc_start": ("held-out acc (start)", 3),
    "acc_final": ("held-out acc (end)", 3),
    "response_length": ("resp. length (last L)", 1),
    "kl": ("KL (last L)", 4),
    "clip_frac": ("clip frac", 4),
    "grad_norm_median": ("grad norm (median)", 2),
    "clipped_frac": ("clipped steps", 2),
    "wall_time_min": ("wall time (min)", 1),
}
COMPARED = {"acc_final": "held-out accuracy (end)", "auc_reward": "reward AUC"}
SWEPT = {"lr": "learner.lr", "lam": "algorithm.lam"}  # label fields a sweep varies, the others held fixed
EQUAL_VALUE_METRICS = ("final_reward", "acc_final")  # swept arm - baseline algorithm at the same swept value
SWEEP_COLUMNS = ("final_reward", "auc_reward", "acc_final", "grad_norm_median", "clipped_frac")


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def fmt_stat(stat: dict[str, Any], digits: int) -> str:
    if stat["mean"] is None:
        return "—"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['se']:.{digits}f}" if stat["se"] is not None else "")


def _fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "—"
    x = 0.0 if abs(x) < 0.5 * 10**-digits else x  # no "-0.000" from a float residue
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _fmt_n(n: int | None, sd: float | None) -> str:
    """Seeds needed; "—" when the sd is unknown (< 2 seeds), "∞" when the observed difference is 0."""
    if sd is None:
        return "—"
    return "∞" if n is None else str(n)


def _fmt_p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"  # 0.0625, 0.25, 1


def _fmt_ci(ci: list[float] | None, digits: int = 4) -> str:
    return "—" if ci is None else f"[{_fmt(ci[0], digits, True)}, {_fmt(ci[1], digits, True)}]"


def table_markdown(report: dict[str, Any]) -> str:
    """The per-arm table (mean ± s.e. over seeds), then the incomplete and skipped runs and the config notes."""
    last = report["settings"]["last"]
    titles = [t.replace("last L", f"last {last}") for t, _ in TABLE_COLUMNS.values()]
    base = report["baseline"]
    reach_title = (
        f"steps to {base['label']} final reward ({_fmt(base['target_reward'])})"
        if base
        else "steps to baseline"
    )
    head = ["arm", "n seeds", *titles[:2], reach_title, *titles[2:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in report["arms"]:
        cells = [fmt_stat(arm["stats"][k], d) for k, (_, d) in TABLE_COLUMNS.items()]
        reach = arm["steps_to_baseline_final"]
        reach_text = "—" if not base else "not reached" if reach is None else str(reach)
        lines.append(
            "| " + " | ".join([arm["label"], str(arm["n"]), *cells[:2], reach_text, *cells[2:]]) + " |"
        )
    lines.append("")
    lines.append(
        f"Mean ± standard error over seeds. Held-out accuracy: `eval/{report['settings']['eval_set']}/avg@1` "
        f"(greedy) at the first and last evaluation. Clipped steps: fraction of steps with "
        f"learner/grad_norm > learner.grad_clip. KL: learner/kl (— where not logged: kl_coef = 0)."
    )
    if report["baseline_note"]:
        lines.append(f"Baseline: {report['baseline_note']}")
    if report["incomplete"]:
        lines += ["", "Incomplete runs (left out):"]
        for r in report["incomplete"]:
            lines.append(
                f"- `{r['run_dir']}` — {r['arm']}, seed {r['seed']}: {r['steps']}/{r['total_steps']} steps"
            )
    if report["skipped"]:
        lines += ["", "Skipped run folders:"]
        lines += [f"- `{r['run_dir']}`: {r['reason']}" for r in report["skipped"]]
    if report["config_differences"]:
        lines += ["", "Config fields that differ between runs besides the seed, algorithm.* and learner.lr:"]
        lines += [f"- `{k}`: {', '.join(v)}" for k, v in report["config_differences"].items()]
    return "\n".join(lines) + "\n"


def comparison_markdown(report: dict[str, Any]) -> str:
    """The comparisons with the baseline: plain numbers, one row per arm and metric; then the post-hoc rows."""
    base = report["baseline"]
    if not base:
        return f"No baseline arm ({report['baseline_note']}): no comparison.\n"
    s = report["settings"]
    delta = s["delta"]
    head = ["arm", "metric", "pairing", "n", "arm mean", "baseline mean", "difference", "95% t-interval",
            "sign-flip p", f"Holm p (m = {s['holm_m']})", "sd of difference", "seeds for observed diff",
            f"seeds for {delta:+g}"]  # fmt: skip
    lines = [
        f"Each arm minus the baseline **{base['label']}**; n = the pairs (seeds both arms ran; the means are over "
        f"those seeds); unpaired rows (no common seed) compare all seeds of each arm (n = arm vs baseline, Welch "
        f"t-interval, exact permutation p, sd of difference = sqrt(sd_arm² + sd_baseline²)).",
        f"95% t-interval: mean(d) ± t_0.975,n-1 · sd(d)/√n, per comparison (not adjusted); from "
        f"{s['min_seeds_for_ci']} pairs. Sign-flip p: exact, two-sided, over all 2^n sign assignments of the n "
        f"differences; it cannot go below 2/2^n (0.25 at n = 3, 0.0625 at n = 5; p < 0.05 needs n >= 6). Holm p: "
        f"Holm's step-down correction of the sign-flip p over one family, the {s['holm_m']} distinct comparisons of "
        f"this report (these rows and the equal-value rows of sweeps.md).",
        "Seeds needed (pairs; per arm when unpaired) for a two-sided t-test at α = 0.05 to detect δ with 80 % "
        "power: the smallest n >= ((t_0.975,n-1 + t_0.8,n-1) · sd / δ)².",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in report["comparisons"]:
        n = str(c["n_arm"]) if c["pairing"].startswith("paired") else f"{c['n_arm']} vs {c['n_baseline']}"
        row = [c["arm"], COMPARED[c["metric"]], c["pairing"], n, _fmt(c["mean_arm"], 4), _fmt(c["mean_baseline"], 4),
               _fmt(c["diff"], 4, signed=True), _fmt_ci(c["ci95"]), _fmt_p(c["p"]), _fmt_p(c["p_holm"]),
               _fmt(c["sd_diff"], 4), _fmt_n(c["n_needed_observed"], c["sd_diff"]),
               _fmt_n(c["n_needed_delta"], c["sd_diff"])]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + posthoc_markdown(report)) + "\n"


def posthoc_markdown(report: dict[str, Any]) -> list[str]:
    """The post-hoc held-out rows: per arm of curves.png and evaluation step, Δ [t-interval], sign-flip p, and the
    count of pairs below / level / above the baseline; a pooled row of all those pairs."""
    ph = report.get("posthoc_heldout")
    if not ph or not ph["rows"]:
        return []
    cols = [*ph["steps"], "mean"]
    names = [f"step {st}" for st in ph["steps"]] + ["mean over those steps"]
    head = ["arm", "n", *(f"Δ {x}" for x in names)]
    lines = ["", f"**Post hoc** (looked at after seeing curves.png, not part of the plan; exploratory, outside the Holm "
             f"family): held-out accuracy of each arm drawn in curves.png minus **{ph['baseline']}**, paired by seed, "
             f"at every evaluation after the first and averaged over them. Cell: difference [95% t-interval], "
             f"sign-flip p, pairs below / level / above the baseline. The pooled row counts every pair of those arms "
             f"(they share the baseline's seeds, so the pairs are not independent: no interval, no p).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for arm in ph["arms"]:
        cells = {r["step"]: r for r in ph["rows"] if r["arm"] == arm}
        n = max(r["n"] for r in cells.values())
        texts = [f"{_fmt(r['diff'], 3, signed=True)} {_fmt_ci(r['ci95'], 3)}, p {_fmt_p(r['p'])}, "
                 f"{r['below']}/{r['level']}/{r['above']}" for r in (cells[c] for c in cols)]  # fmt: skip
        lines.append(f"| {arm} | {n} | " + " | ".join(texts) + " |")
    pooled = {r["step"]: r for r in ph["pooled"]}
    texts = [f"{_fmt(pooled[c]['diff'], 3, signed=True)}, {pooled[c]['below']}/{pooled[c]['level']}/"
             f"{pooled[c]['above']}" for c in cols]  # fmt: skip
    lines.append(
        f"| all of these, pooled | {max(r['n'] for r in ph['pooled'])} | " + " | ".join(texts) + " |"
    )
    return lines


def sweeps_markdown(report: dict[str, Any]) -> str:
    """One table per sweep (value -> the arm's numbers, the best marked), then each swept algorithm at its best
    against the baseline, from the comparison rows."""
    if not report["sweeps"]:
        return "No sweeps (no arms of one algorithm that differ in only lr or lam).\n"
    last = report["settings"]["last"]
    titles = [TABLE_COLUMNS[k][0].replace("last L", f"last {last}") for k in SWEEP_COLUMNS]
    lines = []
    for sw in report["sweeps"]:
        fixed = ", ".join(f"{k}={fmt_value(v)}" for k, v in sw["fixed"].items())
        head = [sw["field"], "arm", "n seeds", *titles]
        lines += [f"**{SWEPT[sw['field']]} sweep of {sw['name']}** ({fixed})", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        for pt in sw["points"]:
            cells = [fmt_stat(pt["stats"][k], TABLE_COLUMNS[k][1]) for k in SWEEP_COLUMNS]
            mark = " **(best)**" if pt["label"] == sw["best"] else ""
            lines.append(
                f"| {fmt_value(pt['value'])}{mark} | {pt['label']} | {pt['n']} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lines.append(
        "Best = the highest mean final training reward (last L steps), the rule the baseline is chosen by. It is "
        "chosen on the same seeds it is then judged on, which flatters every swept arm's best a little (on both sides "
        "of a comparison of bests)."
    )
    base = report["baseline"]
    bests = [sw for sw in report["sweeps"] if sw["field"] == "lr" and base and sw["best"] != base["label"]]
    if bests:
        lines += ["", f"Each algorithm at its best learning rate minus the baseline **{base['label']}**:"]
        for sw in bests:
            for c in report["comparisons"]:
                if c["arm"] == sw["best"]:
                    lines.append(f"- {sw['best']}, {COMPARED[c['metric']]}: {_fmt(c['diff'], 4, signed=True)}, "
                                 f"95% t-interval {_fmt_ci(c['ci95'])}, sign-flip p {_fmt_p(c['p'])}, Holm p "
                                 f"{_fmt_p(c['p_holm'])} ({c['pairing']}, n = {c['n_arm']})")  # fmt: skip
    lines += equal_value_markdown(report)
    return "\n".join(lines) + "\n"


def equal_value_markdown(report: dict[str, Any]) -> list[str]:
    """The swept algorithms against the baseline's algorithm at each common value: one table per field."""
    rows = report["equal_value_comparisons"]
    last = report["settings"]["last"]
    lines = []
    for fld in dict.fromkeys(r["field"] for r in rows):
        titles = [TABLE_COLUMNS[m][0].replace("last L", f"last {last}") for m in EQUAL_VALUE_METRICS]
        head = [
            fld,
            "arm",
            "minus",
            "n pairs",
            *(f"Δ {t} [95% t-interval], sign-flip p, Holm p" for t in titles),
        ]
        lines += ["", f"At equal {SWEPT[fld]}, each swept algorithm minus the baseline's (paired by seed; Holm over "
                  f"the report's family of {report['settings']['holm_m']}, as in comparison.md):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        cells: dict[tuple, dict[str, Any]] = {}
        for r in (r for r in rows if r["field"] == fld):
            cells.setdefault((r["value"], r["arm"], r["baseline"]), {})[r["metric"]] = r
        for (value, arm, base), by_metric in cells.items():
            diffs = []
            for m in EQUAL_VALUE_METRICS:
                c = by_metric.get(m)
                diffs.append("—" if c is None else f"{_fmt(c['diff'], 3, signed=True)} {_fmt_ci(c['ci95'], 3)}, "
                             f"p {_fmt_p(c['p'])}, Holm {_fmt_p(c['p_holm'])}")  # fmt: skip
            n = max(c["n_arm"] for c in by_metric.values())
            lines.append(f"| {fmt_value(value)} | {arm} | {base} | {n} | " + " | ".join(diffs) + " |")
    return lines


def plot_sweeps(report: dict[str, Any], path: Path) -> None:
    """sweeps.png: per swept field (a row) final training reward, held-out accuracy and median grad norm against the
    swept value, one line per sweep (mean ± s.e. bars); lr on a log axis, λ evenly spaced (0, 0.9, 0.99, 1 would
    crowd on a linear one); the baseline as a dashed line where it is not one of the row's points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fields = [f for f in SWEPT if any(sw["field"] == f for sw in report["sweeps"])]
    metrics = [("final_reward", "final training reward"), ("acc_final", "held-out greedy accuracy (end)"),
               ("grad_norm_median", "grad norm (median)")]  # fmt: skip
    fig = Figure(figsize=(14, 4.2 * len(fields)), dpi=110)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(fields), len(metrics), squeeze=False))
    base = report["baseline"]
    base_arm = next((a for a in report["arms"] if base and a["label"] == base["label"]), None)
    for row, fld in zip(axes, fields):
        sweeps = [sw for sw in report["sweeps"] if sw["field"] == fld]
        values = sorted({pt["value"] for sw in sweeps for pt in sw["points"]})
        for ax, (key, title) in zip(row, metrics):
            for i, sw in enumerate(sweeps):
                xs = [pt["value"] if fld == "lr" else values.index(pt["value"]) for pt in sw["points"]]
                ys = [pt["stats"][key]["mean"] for pt in sw["points"]]
                err = [pt["stats"][key]["se"] or 0.0 for pt in sw["points"]]
                if all(y is not None for y in ys):
                    fixed = ", ".join(f"{k}={fmt_value(v)}" for k, v in sw["fixed"].items() if k in SWEPT)
                    ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, color=f"C{i % 10}",
                                label=f"{sw['name']} ({fixed})")  # fmt: skip
            in_row = (
                any(pt["label"] == base["label"] for sw in sweeps for pt in sw["points"]) if base else True
            )
            if base_arm is not None and not in_row and base_arm["stats"][key]["mean"] is not None:
                m, e = base_arm["stats"][key]["mean"], base_arm["stats"][key]["se"] or 0.0
                ax.axhline(m, color="k", ls="--", lw=1, label=f"{base['label']} (baseline)")
                ax.axhspan(m - e, m + e, color="k", alpha=0.08, lw=0)
            if fld == "lr":
                ax.set_xscale("log")
            else:
                ax.set_xticks(range(len(values)), [fmt_value(v) for v in values])
            if key == "grad_norm_median":
                ax.set_yscale("log")  # GRPO's ~2 and GRPO-λ's ~30 on one axis
            ax.set_xlabel(SWEPT[fld])
            ax.set_title(title)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8, loc="best")
    fig.suptitle("sweeps: mean over seeds ± standard error")
    fig.tight_layout()
    fig.savefig(path)


def plot_sweep_curves(report: dict[str, Any], path: Path) -> None:
    """sweep_curves.png: a row per sweep, reward/mean and held-out accuracy against step, a line per swept value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sweeps = report["sweeps"]
    fig = Figure(figsize=(13, 4.2 * len(sweeps)), dpi=110)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(sweeps), 2, squeeze=False))
    by_label = {a["label"]: a for a in report["arms"]}
    for row, sw in zip(axes, sweeps):
        arms = [by_label[pt["label"]] for pt in sw["points"]]
        names = [f"{sw['field']}={fmt_value(pt['value'])}" for pt in sw["points"]]
        fixed = ", ".join(f"{k}={fmt_value(v)}" for k, v in sw["fixed"].items() if k in SWEPT)
        _draw_curves(row, arms, names, report["settings"]["eval_set"], f"{sw['name']} ({fixed}): ")
    fig.suptitle("sweeps, per step: mean over seeds ± standard error")
    fig.tight_layout()
    fig.savefig(path)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """curves.png: reward/mean and held-out greedy accuracy against step, per arm mean ± s.e. band; the arms of
    report["curve_arms"] (each swept algorithm at its main setting)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), dpi=110)
    FigureCanvasAgg(fig)
    arms = [a for a in report["arms"] if a["label"] in report["curve_arms"]]
    _draw_curves(fig.subplots(1, 2), arms, [a["label"] for a in arms], report["settings"]["eval_set"])
    hidden = len(report["arms"]) - len(arms)
    note = f" ({hidden} sweep arms: sweep_curves.png)" if hidden else ""
    fig.suptitle("mean over seeds ± standard error" + note)
    fig.tight_layout()
    fig.savefig(path)


def _draw_curves(axes, arms: list[dict[str, Any]], names: list[str], eval_set: str, prefix: str = "") -> None:
    """Two panels: reward/mean (training) and held-out greedy accuracy against step, a line + s.e. band per arm."""
    panels = [("reward", "reward/mean (training)"), ("eval", f"held-out greedy accuracy ({eval_set})")]
    for ax, (curve_key, title) in zip(axes, panels):
        for i, (arm, name) in enumerate(zip(arms, names)):
            c = arm["curves"][curve_key]
            if not c["step"]:
                continue
            mean = np.array(c["mean"], dtype=float)
            se = np.array([0.0 if v is None else v for v in c["se"]])
            color = f"C{i % 10}"
            style = "-" if i < 10 else "--"
            marker = "o" if curve_key == "eval" else None
            ax.plot(
                c["step"],
                mean,
                style,
                color=color,
                marker=marker,
                ms=3,
                label=f"{name} (n={arm['n']})",
            )
            ax.fill_between(c["step"], mean - se, mean + se, color=color, alpha=0.2, lw=0)
        ax.set_xlabel("step")
        ax.set_title(prefix + title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
