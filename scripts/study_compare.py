"""Comparing the arms of a seeded study (formulas in study_report.py's docstring): paired or unpaired comparisons
with the baseline, the Holm family, the post-hoc held-out rows, the baseline's choice and the sweeps."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_render import EQUAL_VALUE_METRICS, SWEEP_COLUMNS, SWEPT  # noqa: E402
from study_runs import Run, cfg_get, seed_order  # noqa: E402
from study_stats import (  # noqa: E402
    holm,
    mean_se,
    min_sign_flip_p,
    permutation_p,
    seeds_needed,
    sign_flip_p,
    t_interval,
    welch_interval,
)

ALPHA, POWER = 0.05, 0.8


# A t-interval needs an sd: from 2 pairs (t_{0.975,1} = 12.7 makes it wide, as it should be). Fewer: the
# difference only. (The percentile bootstrap this replaced returned about [min d, max d] over 3 pairs.)
MIN_SEEDS_FOR_CI = 2


def compare(arm: list[Run], base: list[Run], metric: str, seed: int, delta: float) -> dict[str, Any]:
    """The paired (by trainer.seed) or, without common seeds, unpaired comparison of `metric` between two arms:
    difference, 95 % t-interval (paired t / Welch), exact sign-flip / permutation p, seeds needed (module docstring).
    p_holm is filled in by `holm_family` once the report's family is known."""
    a_by_seed = {r.seed: r.summary[metric] for r in arm if r.summary[metric] is not None}
    b_by_seed = {r.seed: r.summary[metric] for r in base if r.summary[metric] is not None}
    common = sorted(set(a_by_seed) & set(b_by_seed), key=seed_order)
    paired = bool(common)
    if paired:
        a = np.array([a_by_seed[s] for s in common], dtype=float)
        b = np.array([b_by_seed[s] for s in common], dtype=float)
        sd = float(np.std(a - b, ddof=1)) if len(common) > 1 else None
    else:
        a = np.array(list(a_by_seed.values()), dtype=float)
        b = np.array(list(b_by_seed.values()), dtype=float)
        sd = float(math.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))) if len(a) > 1 and len(b) > 1 else None
    has_data = bool(len(a) and len(b))
    out: dict[str, Any] = {
        "metric": metric,
        "pairing": "paired by seed" if paired else "unpaired (no common seeds)" if has_data else "no data",
        "seeds": common if paired else None,
        "n_arm": len(a),
        "n_baseline": len(b),
        "mean_arm": float(a.mean()) if len(a) else None,
        "mean_baseline": float(b.mean()) if len(b) else None,
        "diff": float(a.mean() - b.mean()) if has_data else None,
        "interval": "paired t" if paired else "Welch t",
        "ci95": None,
        "ci_excludes_0": None,
        "sd_diff": sd,
        "test": "exact sign-flip" if paired else "exact permutation",
        "p": None,
        "p_min": None,
        "p_holm": None,
    }
    if sd is not None and min(len(a), len(b)) >= MIN_SEEDS_FOR_CI:
        lo, hi = t_interval(a - b) if paired else welch_interval(a, b)
        out.update(ci95=[lo, hi], ci_excludes_0=bool(lo > 0 or hi < 0))
    if has_data:
        out["p"] = sign_flip_p(a - b, seed) if paired else permutation_p(a, b, seed)
        out["p_min"] = min_sign_flip_p(len(a)) if paired else None  # the smallest p n pairs allow
    out["n_needed_observed"] = seeds_needed(sd, out["diff"], ALPHA, POWER, paired)
    out["n_needed_delta"] = seeds_needed(sd, delta, ALPHA, POWER, paired)
    out["delta"] = delta
    return out


def holm_family(*row_lists: list[dict[str, Any]]) -> int:
    """Holm-adjust the p of every distinct (arm, baseline, metric) comparison in `row_lists` as one family (a
    comparison listed twice counts once and gets one p_holm); sets each row's p_holm, returns the family size m."""
    keys = list(dict.fromkeys((r["arm"], r["baseline"], r["metric"]) for rows in row_lists for r in rows))
    first = {}
    for rows in row_lists:
        for r in rows:
            first.setdefault((r["arm"], r["baseline"], r["metric"]), r["p"])
    adjusted = dict(zip(keys, holm([first[k] for k in keys])))
    for rows in row_lists:
        for r in rows:
            r["p_holm"] = adjusted[(r["arm"], r["baseline"], r["metric"])]
    return sum(first[k] is not None for k in keys)


def _signs(d: list[float], tie: float = 1e-9) -> dict[str, int]:
    return {
        "below": sum(v < -tie for v in d),
        "level": sum(abs(v) <= tie for v in d),
        "above": sum(v > tie for v in d),
    }


def posthoc_heldout(arms: dict[str, list[Run]], labels: list[str], base_label: str, eval_key: str,
                    seed: int) -> dict[str, Any]:  # fmt: skip
    """Post hoc: held-out accuracy of each arm in `labels` minus the baseline, paired by seed, at every evaluation
    step after the first and as acc_mean_after_start (step "mean"). Rows: {arm, step, n, diff, ci95, p, below,
    level, above}; pooled per step over all those pairs: {step, n, diff (their mean), below, level, above}."""
    base = {r.seed: r for r in arms[base_label]}
    labels = [lab for lab in labels if any(r.seed in base for r in arms[lab])]  # paired only
    steps = sorted({s for r in base.values() for s in r.rows if eval_key in r.rows[s]})[1:]

    def value(r: Run, step: int | str) -> float | None:
        return r.summary["acc_mean_after_start"] if step == "mean" else r.rows.get(step, {}).get(eval_key)

    rows, pooled = [], {step: [] for step in [*steps, "mean"]}
    for label in labels:
        for step, pool in pooled.items():
            pairs = [(value(r, step), value(base[r.seed], step)) for r in arms[label] if r.seed in base]
            d = [x - y for x, y in pairs if x is not None and y is not None]
            ci = t_interval(d)
            rows.append({"arm": label, "step": step, "n": len(d), "diff": statistics.fmean(d) if d else None,
                         "ci95": list(ci) if ci else None, "p": sign_flip_p(d, seed), **_signs(d)})  # fmt: skip
            pool += d
    pooled_rows = [{"step": step, "n": len(d), "diff": statistics.fmean(d) if d else None, **_signs(d)}
                   for step, d in pooled.items()]  # fmt: skip
    return {"arms": labels, "baseline": base_label, "steps": steps, "rows": rows, "pooled": pooled_rows}


def choose_baseline(arms: dict[str, list[Run]], baseline: str) -> tuple[str | None, str]:
    """The baseline arm's label and a note: an exact label, or the arm named `baseline`; of several such arms the
    one with the highest mean final_reward."""
    if baseline in arms:
        return baseline, ""
    matches = [lab for lab, runs in arms.items() if cfg_get(runs[0].config, "algorithm.name") == baseline]
    if not matches:
        return None, f"no arm {baseline!r} among {sorted(arms)}"
    if len(matches) == 1:
        return matches[0], ""

    def final(lab: str) -> float:
        m = mean_se([r.summary["final_reward"] for r in arms[lab]])["mean"]
        return -math.inf if m is None else m

    best = max(matches, key=final)
    return (
        best,
        f"{best}: the best of {len(matches)} {baseline!r} arms by mean final training reward ({', '.join(matches)})",
    )


def _final_reward(arm: dict[str, Any]) -> float:
    m = arm["stats"]["final_reward"]["mean"]
    return -math.inf if m is None else m


def find_sweeps(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweeps among the arms: groups of >= 2 arms that share algorithm.name and every label field but one of
    SWEPT (e.g. GRPO at three learning rates). Each: {field, name, fixed, points (sorted by value), best}, best =
    the arm with the highest mean final_reward (training reward, the rule the baseline is chosen by)."""
    sweeps = []
    for fld in SWEPT:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for a in arms:
            if a["fields"].get(fld) is not None:
                fixed = tuple((k, v) for k, v in a["fields"].items() if k != fld)
                groups.setdefault(fixed, []).append(a)
        for fixed, members in groups.items():
            if len(members) < 2:
                continue
            members = sorted(members, key=lambda a: a["fields"][fld])
            sweeps.append({
                "field": fld,
                "name": dict(fixed)["name"],
                "fixed": {k: v for k, v in fixed if k != "name"},
                "points": [{"value": a["fields"][fld], "label": a["label"], "n": a["n"],
                            "stats": {k: a["stats"][k] for k in SWEEP_COLUMNS}} for a in members],
                "best": max(members, key=_final_reward)["label"],
                "main": max(members, key=lambda a: (a["n"], _final_reward(a)))["label"],
            })  # fmt: skip
    return sweeps


def curve_arms(arms: list[dict[str, Any]], sweeps: list[dict[str, Any]]) -> list[str]:
    """The arms curves.png draws: every arm but a sweep's side points, i.e. each swept algorithm at its main
    setting (the value with the most seeds; ties: the best). Every point's curves: sweep_curves.png."""
    side = {pt["label"] for sw in sweeps for pt in sw["points"] if pt["label"] != sw["main"]}
    return [a["label"] for a in arms if a["label"] not in side]


def equal_value_comparisons(
    sweeps: list[dict[str, Any]], arms: dict[str, list[Run]], base_name: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Each swept algorithm minus the baseline's algorithm swept over the same field, at every value both have
    (GRPO-λ − GRPO at each lr), on EQUAL_VALUE_METRICS, paired by seed as `compare` pairs. If one algorithm only
    looked better at the other's step size, the difference would change sign along the sweep."""
    rows = []
    for base in (s for s in sweeps if s["name"] == base_name):
        base_at = {p["value"]: p["label"] for p in base["points"]}
        for sw in sweeps:
            if sw["field"] != base["field"] or sw["name"] == base_name:
                continue
            for p in sw["points"]:
                if p["value"] not in base_at:
                    continue
                for metric in EQUAL_VALUE_METRICS:
                    c = compare(arms[p["label"]], arms[base_at[p["value"]]], metric, args.seed, args.delta)
                    rows.append({"field": sw["field"], "value": p["value"], "arm": p["label"],
                                 "baseline": base_at[p["value"]], **c})  # fmt: skip
    return rows
