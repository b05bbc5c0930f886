"""The runs of a seeded study: finding and loading run folders (config.yaml + metrics.jsonl), grouping them into
arms, and the per-run numbers (formulas in study_report.py's docstring). Shared by study_report.py,
study_sweep.py and study2_report.py."""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_render import fmt_value  # noqa: E402
from study_stats import mean_se  # noqa: E402

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
