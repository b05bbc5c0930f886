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
The tables and figures are drawn by study_render.py, the statistics are study_stats.py (both beside this file).
Only numpy, matplotlib (Agg) and the standard library (+ PyYAML, already a dependency) are used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # study_render beside this file, however it is loaded
from study_render import (  # noqa: E402
    COMPARED,
    EQUAL_VALUE_METRICS,
    SWEEP_COLUMNS,
    SWEPT,
    TABLE_COLUMNS,
    comparison_markdown,
    fmt_value,
    plot_curves,
    plot_sweep_curves,
    plot_sweeps,
    sweeps_markdown,
    table_markdown,
)
from study_stats import (  # noqa: E402
    holm,
    mean_se,
    min_sign_flip_p,
    permutation_p,
    seeds_needed,
    sign_flip_p,
    steps_to_reach,
    t_interval,
    welch_interval,
)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
REWARD = "reward/mean"
LABEL_FIELDS = {  # label name -> config field; with algorithm.name these identify an arm
    "trace_style": "algorithm.trace_style",
    "trace_anchor": "algorithm.trace_anchor",
    "policy_loss": "algorithm.policy_loss",
    "eligibility_grad": "algorithm.eligibility_grad",
    "lam": "algorithm.lam",
    "lr": "learner.lr",
}
# config fields expected to differ between runs of a study: not reported as a confounder
BOOKKEEPING = (
    "trainer.seed",
    "trainer.run_name",
    "trainer.output_dir",
    "trainer.resume",
    "logger.",
    "algorithm.",
)
BOOKKEEPING_EXACT = ("learner.lr",)
ALPHA, POWER = 0.05, 0.8


# --------------------------------------------------------------------------------------------- loading
@dataclass
class Run:
    """One run folder: its config (nested dict) and its metrics by step (the last line of a step wins)."""

    path: Path
    config: dict[str, Any]
    rows: dict[int, dict[str, float]]
    arm: tuple = ()
    label: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        return cfg_get(self.config, "trainer.seed")

    @property
    def total_steps(self) -> int | None:
        return cfg_get(self.config, "trainer.total_steps")

    def training_steps(self) -> list[int]:
        """Steps >= 1 with any non-eval metric (step 0 holds only the eval before training)."""
        return sorted(
            s for s, row in self.rows.items() if s >= 1 and any(not k.startswith("eval/") for k in row)
        )

    @property
    def complete(self) -> bool:
        return self.total_steps is None or len(self.training_steps()) >= self.total_steps


def seed_order(seed: Any) -> tuple:
    """Sort key of seeds: numbers in numeric order, then anything else (None) by its text."""
    is_num = isinstance(seed, (int, float))
    return (not is_num, seed if is_num else 0, str(seed))


def cfg_get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; `default` where a level is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def find_run_dirs(folders: list[Path]) -> list[Path]:
    """Every folder at or below `folders` holding both config.yaml and metrics.jsonl (not searched further
    below: a run's checkpoints stay unread); each once, in sorted order."""
    found: dict[Path, Path] = {}
    for top in folders:
        for dirpath, dirnames, filenames in os.walk(top):
            if CONFIG_FILE in filenames and METRICS_FILE in filenames:
                found.setdefault(Path(dirpath).resolve(), Path(dirpath))
                dirnames[:] = []
            else:
                dirnames.sort()
    return sorted(found.values())


def load_metrics(path: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl -> {step: {key: value}}: the last line of a step replaces earlier ones; null values and
    unreadable lines (an interrupted write) are dropped."""
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            step = int(row.pop("step"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
        row.pop("time", None)
        rows[step] = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
    return rows


def load_run(run_dir: Path) -> Run:
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    return Run(path=run_dir, config=config, rows=load_metrics(run_dir / METRICS_FILE))


# --------------------------------------------------------------------------------------------- arms
def arm_key(cfg: dict[str, Any]) -> tuple:
    """(algorithm.name, trace_style, trace_anchor, policy_loss, eligibility_grad, lam, lr) of a config."""
    return (cfg_get(cfg, "algorithm.name"),) + tuple(cfg_get(cfg, f) for f in LABEL_FIELDS.values())


def arm_labels(keys: list[tuple]) -> dict[tuple, str]:
    """Label per arm key: the algorithm name, plus ``(field=value, ...)`` for the fields that differ among the arms
    sharing that name."""
    labels = {}
    names = list(LABEL_FIELDS)
    for key in keys:
        same_name = [k for k in keys if k[0] == key[0]]
        differing = [i for i in range(len(names)) if len({k[i + 1] for k in same_name}) > 1]
        extra = ", ".join(f"{names[i]}={fmt_value(key[i + 1])}" for i in differing)
        labels[key] = f"{key[0]} ({extra})" if extra else str(key[0])
    return labels


def varying_fields(runs: list[Run]) -> dict[str, list[str]]:
    """Config fields (dotted) whose values differ between `runs`, other than the bookkeeping ones, the seed and the
    arm-defining ones (algorithm.*, learner.lr): possible confounders, reported as such."""

    def flat(d: Any, prefix: str = "") -> dict[str, str]:
        if not isinstance(d, dict):
            return {prefix: json.dumps(d, sort_keys=True)}
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out

    flats = [{k.rstrip("."): v for k, v in flat(r.config).items()} for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    out = {}
    for k in keys:
        if k.startswith(BOOKKEEPING) or k in BOOKKEEPING_EXACT:
            continue
        values = {f.get(k, "<missing>") for f in flats}
        if len(values) > 1:
            out[k] = sorted(values)
    return out


# --------------------------------------------------------------------------------------------- per run
def _values(run: Run, key: str, steps: list[int]) -> list[float]:
    return [run.rows[s][key] for s in steps if key in run.rows[s]]


def _mean_or_none(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summarize_run(run: Run, eval_set: str, last: int) -> dict[str, Any]:
    """The per-run numbers (formulas in the module docstring)."""
    steps = run.training_steps()
    rewards = _values(run, REWARD, steps)
    grad_norms = _values(run, "learner/grad_norm", steps)
    grad_clip = cfg_get(run.config, "learner.grad_clip") or 0.0
    step_times = _values(run, "time/step_s", steps)
    eval_key = f"eval/{eval_set}/avg@1"
    evals = [(s, run.rows[s][eval_key]) for s in sorted(run.rows) if eval_key in run.rows[s]]
    clipped = None
    if grad_norms:
        clipped = sum(g > grad_clip for g in grad_norms) / len(grad_norms) if grad_clip > 0 else 0.0
    return {
        "steps": len(steps),
        "total_steps": run.total_steps,
        "final_reward": _mean_or_none(rewards[-last:]),
        "auc_reward": _mean_or_none(rewards),
        "acc_start": evals[0][1] if evals else None,
        "acc_start_step": evals[0][0] if evals else None,
        "acc_final": evals[-1][1] if evals else None,
        "acc_final_step": evals[-1][0] if evals else None,
        "acc_mean_after_start": _mean_or_none([v for _, v in evals[1:]]),
        "response_length": _mean_or_none(_values(run, "response/length_mean", steps)[-last:]),
        "kl": _mean_or_none(_values(run, "learner/kl", steps)[-last:]),
        "clip_frac": _mean_or_none(_values(run, "learner/clip_frac", steps)),
        "grad_norm_median": statistics.median(grad_norms) if grad_norms else None,
        "grad_clip": grad_clip,
        "clipped_frac": clipped,
        "wall_time_s": sum(step_times) if step_times else None,
        "wall_time_min": sum(step_times) / 60 if step_times else None,
    }


# --------------------------------------------------------------------------------------------- statistics
def mean_curve(runs: list[Run], key: str, steps_of: str = "train") -> dict[str, list]:
    """Per step, mean ± s.e. of `key` over the runs that logged it: {step, mean, se, n} lists.
    `steps_of` "train": training steps only; "all": every step (evaluation curves include step 0)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        steps = run.training_steps() if steps_of == "train" else sorted(run.rows)
        for s in steps:
            if key in run.rows[s]:
                by_step.setdefault(s, []).append(run.rows[s][key])
    out: dict[str, list] = {"step": [], "mean": [], "se": [], "n": []}
    for s in sorted(by_step):
        stat = mean_se(by_step[s])
        out["step"].append(s)
        out["mean"].append(stat["mean"])
        out["se"].append(stat["se"])
        out["n"].append(stat["n"])
    return out


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
