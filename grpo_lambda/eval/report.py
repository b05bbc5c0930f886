"""Evaluation reports: per-sample records -> per-dataset summary -> markdown table, PNG chart, run comparisons.

Pure Python (plus matplotlib for the charts, imported lazily): no Ray, no vLLM. One *record* per sample, as in
``samples.jsonl``::

    {"dataset": "math500", "id": "test/algebra/1.json", "sample": 3, "extracted": "\\frac{1}{2}", "gold": "0.5",
     "outcome": "correct", "reward": 1.0, "response_tokens": 412, "truncated": false, ...}

:func:`summarize` reads ``dataset``, ``id``, ``outcome`` (``correct`` is the only one that counts as solved),
``response_tokens`` and ``truncated``, and optionally ``sample`` (the sample index: repeated indices of a problem
keep the last record, so a resumed file with a re-written line counts it once), ``reward`` and ``extracted``
(used only for a problem whose majority verdict is not given). Other keys are ignored.

The summary (JSON-serialisable; ``json.dump`` it as is, an extra top-level ``"meta"`` key is tolerated by every
function here)::

    {"k": 16,
     "datasets": {"math500": {"avg@16": 0.71, "pass@1": 0.71, "pass@2": 0.8, ..., "pass@16": 0.93, "maj@16": 0.8,
                              "prompts": 500, "samples": 8000, "response_tokens_mean": 612.4,
                              "truncated_frac": 0.01, "reward_mean": 0.71,
                              "outcomes": {"correct": 5680, "wrong": 2100, "unparsable": 220, "timeout": 0,
                                           "error": 0}},
                  ...},
     "paper_average": {"avg@16": 0.45, "pass@1": 0.45, ..., "pass@16": 0.7, "maj@16": 0.5,
                       "datasets": ["aime24", "math500", "olympiadbench", "minerva_math", "amc23"],
                       "missing": []}}

Scores are fractions in [0, 1]; tables and charts show them in percent.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from grpo_lambda.eval.metrics import avg_at_k, maj_at_k, pass_at_k, pass_ks
from grpo_lambda.rewards.spec import CORRECT, OUTCOMES
from grpo_lambda.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

PAPER_DATASETS = ("aime24", "math500", "olympiadbench", "minerva_math", "amc23")
"""The five benchmarks whose mean avg@k the GRPO-λ paper reports (data file stems)."""
SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.md"
PLOT_FILE = "summary.png"

ProblemKey = tuple[str, str]  # (dataset, str(id))


# --------------------------------------------------------------------------------------- grouping
def problem_key(record: Mapping[str, Any]) -> ProblemKey:
    """``(dataset, str(id))`` of a record: the key of :func:`group_by_problem` and of ``maj_scores``."""
    try:
        return str(record["dataset"]), str(record["id"])
    except KeyError as e:
        raise ValueError(f"evaluation record without {e.args[0]!r}: {_short(record)}") from None


def group_by_problem(records: Iterable[Mapping[str, Any]]) -> dict[ProblemKey, list[Mapping[str, Any]]]:
    """Records per problem, problems in order of first appearance, each problem's samples by ``sample`` index.

    A repeated ``(dataset, id, sample)`` keeps the last record. Records without ``sample`` are all kept, in order.
    """
    grouped: dict[ProblemKey, dict[Any, Mapping[str, Any]]] = {}
    for i, rec in enumerate(records):
        samples = grouped.setdefault(problem_key(rec), {})
        idx = rec.get("sample")
        samples[("s", int(idx)) if idx is not None else ("r", i)] = rec
    return {key: [s[j] for j in sorted(s, key=_sample_order)] for key, s in grouped.items()}


def _sample_order(j: tuple[str, int]) -> tuple[int, int]:
    return (0 if j[0] == "s" else 1, j[1])


def is_correct(record: Mapping[str, Any]) -> bool:
    """Whether a record's outcome is ``correct``."""
    if "outcome" not in record:
        raise ValueError(f"evaluation record without 'outcome': {_short(record)}")
    return record["outcome"] == CORRECT


# --------------------------------------------------------------------------------------- summary
def summarize(
    records: Iterable[Mapping[str, Any]],
    maj_scores: Mapping[tuple[str, Any], float] | None = None,
    k: int | None = None,
) -> dict[str, Any]:
    """Per-dataset avg@k, unbiased pass@j (j in ``pass_ks(k)``), maj@k, counts, and the paper's average.

    Args:
        records: one mapping per sample (see the module docstring for the keys).
        maj_scores: each problem's majority verdict (:func:`~grpo_lambda.eval.metrics.maj_at_k`, with the
            verifier's equivalence), keyed by ``(dataset, id)`` (ids compared as strings). A problem that is
            missing gets ``maj_at_k`` over its records' ``extracted`` answers with exact string equality.
        k: samples per prompt (``eval.samples_per_prompt``); default: the fewest samples of any problem. Every
            problem needs at least k samples (ValueError otherwise); a problem with n > k uses all n (avg and
            the pass@j estimator stay unbiased).

    Benchmark numbers are means over the dataset's problems of the per-problem values: avg = c / n,
    pass@j = 1 − C(n − c, j) / C(n, j), maj as given. Datasets appear in order of first appearance.
    """
    problems = group_by_problem(records)
    if not problems:
        raise ValueError("no evaluation records to summarize")
    if k is None:
        k = min(len(samples) for samples in problems.values())
    if k < 1:
        raise ValueError(f"need k >= 1, got k={k}")
    maj = {(str(d), str(i)): float(v) for (d, i), v in (maj_scores or {}).items()}
    by_dataset: dict[str, list[ProblemKey]] = {}
    for key in problems:
        by_dataset.setdefault(key[0], []).append(key)

    datasets: dict[str, dict[str, Any]] = {}
    for name, keys in by_dataset.items():
        datasets[name] = _summarize_dataset(name, [(key, problems[key]) for key in keys], maj, k)
    return {"k": k, "datasets": datasets, "paper_average": paper_average(datasets, k)}


def _summarize_dataset(
    name: str,
    problems: Sequence[tuple[ProblemKey, list[Mapping[str, Any]]]],
    maj: Mapping[ProblemKey, float],
    k: int,
) -> dict[str, Any]:
    ks = pass_ks(k)
    avg, maj_sum, pass_sum = 0.0, 0.0, dict.fromkeys(ks, 0.0)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    tokens: list[float] = []
    rewards: list[float] = []
    truncated = samples = 0
    for key, recs in problems:
        n = len(recs)
        if n < k:
            raise ValueError(f"{name}: problem {key[1]!r} has {n} samples, fewer than k={k}")
        correct = [is_correct(r) for r in recs]
        c = sum(correct)
        avg += avg_at_k(correct)
        for j in ks:
            pass_sum[j] += pass_at_k(n, c, j)
        maj_sum += maj[key] if key in maj else maj_at_k([r.get("extracted") for r in recs], correct)
        for r in recs:
            outcome = str(r["outcome"])
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if r.get("response_tokens") is not None:
                tokens.append(float(r["response_tokens"]))
            if r.get("reward") is not None:
                rewards.append(float(r["reward"]))
            truncated += bool(r.get("truncated"))
        samples += n
    p = len(problems)
    out: dict[str, Any] = {f"avg@{k}": avg / p}
    out.update({f"pass@{j}": pass_sum[j] / p for j in ks})
    out[f"maj@{k}"] = maj_sum / p
    out.update(
        prompts=p,
        samples=samples,
        response_tokens_mean=sum(tokens) / len(tokens) if tokens else None,
        truncated_frac=truncated / samples,
    )
    if rewards:
        out["reward_mean"] = sum(rewards) / len(rewards)
    out["outcomes"] = outcomes
    return out


def paper_average(datasets: Mapping[str, Mapping[str, Any]], k: int) -> dict[str, Any]:
    """Mean avg@k, pass@j (j in ``pass_ks(k)``) and maj@k over :data:`PAPER_DATASETS`; the values are None unless
    all five are there (``missing`` lists the absent ones)."""
    missing = [d for d in PAPER_DATASETS if d not in datasets]
    out: dict[str, Any] = {}
    for metric in (f"avg@{k}", *(f"pass@{j}" for j in pass_ks(k)), f"maj@{k}"):
        values = [datasets[d].get(metric) for d in PAPER_DATASETS if d in datasets]
        ok = not missing and all(v is not None for v in values)
        out[metric] = sum(values) / len(values) if ok else None
    out.update(datasets=list(PAPER_DATASETS), missing=missing)
    return out


def flat_metrics(summary: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """``{"<prefix>/<dataset>/avg@k": ..., ".../pass@j", ".../maj@k", ".../response_tokens_mean",
    ".../truncated_frac"}`` for a metrics logger, plus ``<prefix>/paper_average/avg@k`` when complete."""
    out: dict[str, float] = {}
    for name, ds in summary["datasets"].items():
        for key, value in ds.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and key not in ("prompts", "samples")
            ):
                out[f"{prefix}/{name}/{key}"] = float(value)
    for key, value in (summary.get("paper_average") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/paper_average/{key}"] = float(value)
    return out


# --------------------------------------------------------------------------------------- files
def load_summary(folder: str | Path) -> dict[str, Any]:
    """Read ``folder/summary.json`` (or the file itself, if ``folder`` is a file); errors name the folder."""
    folder = Path(folder)
    path = folder if folder.is_file() else folder / SUMMARY_FILE
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {SUMMARY_FILE} in this folder (python -m grpo_lambda.evaluate eval.output_dir=... "
            "writes it at the end of an evaluation)"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("datasets"), dict) or "k" not in summary:
        raise ValueError(f"{path}: not an evaluation summary (no 'k' and 'datasets' keys)")
    return summary


def write_report(
    summary: Mapping[str, Any], out_dir: str | Path, meta: Mapping[str, Any] | None = None, plot: bool = True
) -> dict[str, Path]:
    """Write ``summary.json`` (with ``meta`` added as a top-level key), ``table.md`` and ``summary.png``
    (atomically) into ``out_dir``; returns their paths by kind (``summary``, ``table``, ``plot``)."""
    out_dir = Path(out_dir)
    full = {**summary, "meta": dict(meta)} if meta is not None else dict(summary)
    paths = {
        "summary": atomic_write_json(out_dir / SUMMARY_FILE, full),
        "table": atomic_write_text(out_dir / TABLE_FILE, render_table(full) + "\n"),
    }
    if plot:
        paths["plot"] = plot_summary(full, out_dir / PLOT_FILE)
    return paths


# --------------------------------------------------------------------------------------- tables
def render_table(summary: Mapping[str, Any]) -> str:
    """Markdown table: one row per dataset (avg@k, pass@1 … pass@k, maj@k in %, prompts, mean response tokens,
    truncated %) and the paper-average row; a line with the run's ``meta`` (model, k, temperature …) above it."""
    k = int(summary["k"])
    metrics = [f"avg@{k}"] + [f"pass@{j}" for j in pass_ks(k)] + [f"maj@{k}"]
    header = ["dataset", *metrics, "prompts", "tokens", "truncated"]
    rows = []
    for name, ds in summary["datasets"].items():
        rows.append(
            [name, *(_pct(ds.get(m)) for m in metrics), str(ds.get("prompts", "–")),
             _num(ds.get("response_tokens_mean")), _pct(ds.get("truncated_frac"), "%")]
        )  # fmt: skip
    pa = summary.get("paper_average")
    if pa:
        label = (
            "**paper average**"
            if not pa.get("missing")
            else f"paper average (missing: {', '.join(pa['missing'])})"
        )
        rows.append([label, *(_pct(pa.get(m)) for m in metrics), "", "", ""])
    lines = []
    meta = _meta_line(summary.get("meta"))
    if meta:
        lines += [meta, ""]
    lines += _markdown(header, rows)
    lines += [
        "",
        "Scores in % over prompts (pass@j unbiased, Chen et al. 2021); tokens: mean response tokens.",
    ]
    return "\n".join(lines)


def compare(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of several runs: rows datasets (and the paper average), columns avg@k and pass@k of each
    run (in %), then Δ avg@k of each later run against the first one (percentage points)."""
    if not summaries:
        raise ValueError("nothing to compare")
    labels = list(summaries)
    names = _union_datasets(summaries)
    header = ["dataset"]
    for label in labels:
        k = int(summaries[label]["k"])
        header += [f"{label} avg@{k}", f"{label} pass@{k}"]
    header += [f"Δ avg {label} − {labels[0]}" for label in labels[1:]]

    def cells(get: Any) -> list[str]:
        out, avgs = [], []
        for label in labels:
            k = int(summaries[label]["k"])
            entry = get(summaries[label])
            avg = entry.get(f"avg@{k}") if entry else None
            out += [_pct(avg), _pct(entry.get(f"pass@{k}") if entry else None)]
            avgs.append(avg)
        for avg in avgs[1:]:
            out.append(_delta(avg, avgs[0]))
        return out

    rows = [[name, *cells(lambda s, n=name: s["datasets"].get(n))] for name in names]
    if any(s.get("paper_average") for s in summaries.values()):
        rows.append(["**paper average**", *cells(lambda s: s.get("paper_average"))])
    lines = _markdown(header, rows)
    metas = [(label, _meta_line(summaries[label].get("meta"))) for label in labels]
    if any(m for _, m in metas):
        lines += [""] + [f"- **{label}**: {m or '(no meta)'}" for label, m in metas]
    return "\n".join(lines)


def _union_datasets(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for s in summaries.values():
        names += [n for n in s["datasets"] if n not in names]
    return names


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(r) + " |" for r in (header, align, *rows)]


def _pct(value: Any, suffix: str = "") -> str:
    return "–" if value is None else f"{100 * float(value):.1f}{suffix}"


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.0f}"


def _delta(value: Any, base: Any) -> str:
    return "–" if value is None or base is None else f"{100 * (float(value) - float(base)):+.1f}"


def _meta_line(meta: Any) -> str:
    if not isinstance(meta, Mapping):
        return ""
    parts = [f"{key} `{value}`" for key, value in meta.items() if isinstance(value, (str, int, float, bool))]
    return " · ".join(parts)


def _short(record: Mapping[str, Any]) -> str:
    text = repr({k: record[k] for k in list(record)[:6]})
    return text if len(text) < 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------- charts
def plot_summary(summary: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """PNG (matplotlib Agg): per dataset (and the complete paper average) grouped bars avg@k, pass@k, maj@k in %,
    each labelled with its value."""
    k = int(summary["k"])
    metrics = [f"avg@{k}", f"pass@{k}", f"maj@{k}"]
    groups = {name: ds for name, ds in summary["datasets"].items()}
    pa = summary.get("paper_average") or {}
    if pa.get(f"avg@{k}") is not None:
        groups["paper avg"] = pa
    series = {m: [g.get(m) for g in groups.values()] for m in metrics}
    return _grouped_bars(
        [(title or _default_title(summary), list(groups), series)], path, ylabel="% of prompts"
    )


def plot_compare(summaries: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG (matplotlib Agg): two panels, avg@k and pass@k in %, grouped bars per dataset, one bar per run."""
    if not summaries:
        raise ValueError("nothing to compare")
    names = _union_datasets(summaries)
    if all((s.get("paper_average") or {}).get(f"avg@{int(s['k'])}") is not None for s in summaries.values()):
        names.append("paper avg")

    def entry(s: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        return (s.get("paper_average") or {}) if name == "paper avg" else s["datasets"].get(name) or {}

    panels = []
    for metric in ("avg", "pass"):
        series = {
            f"{label} ({metric}@{int(s['k'])})": [entry(s, n).get(f"{metric}@{int(s['k'])}") for n in names]
            for label, s in summaries.items()
        }
        panels.append((f"{title} {metric}@k".strip(), names, series))
    return _grouped_bars(panels, path, ylabel="% of prompts")


def _default_title(summary: Mapping[str, Any]) -> str:
    meta = summary.get("meta") if isinstance(summary.get("meta"), Mapping) else {}
    model = meta.get("model_path") or meta.get("model") or ""
    return (
        f"{Path(str(model)).name} (k={summary['k']})".strip() if model else f"evaluation (k={summary['k']})"
    )


def _grouped_bars(
    panels: Sequence[tuple[str, Sequence[str], Mapping[str, Sequence[float | None]]]],
    path: str | Path,
    ylabel: str,
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_groups = max(len(groups) for _, groups, _ in panels)
    n_series = max(len(series) for _, _, series in panels)
    width = max(7.0, 1.0 + n_groups * (0.5 + 0.35 * n_series))
    fig = Figure(figsize=(width, 3.8 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    for p, (title, groups, series) in enumerate(panels, start=1):
        ax = fig.add_subplot(len(panels), 1, p)
        bar_w = 0.8 / max(1, len(series))
        for s, (name, values) in enumerate(series.items()):
            xs = [g + (s - (len(series) - 1) / 2) * bar_w for g in range(len(groups))]
            heights = [100 * v if v is not None else 0.0 for v in values]
            bars = ax.bar(xs, heights, bar_w, label=name)
            labels = [f"{h:.1f}" if v is not None else "n/a" for h, v in zip(heights, values)]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylim(0, 125)  # room for the value labels and a one-row legend
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", fontsize=8, ncol=len(series), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
