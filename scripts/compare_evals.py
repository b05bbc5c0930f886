"""Put several evaluations (runs or models) on one table: markdown printed and written, plus a PNG chart.

    .venv/bin/python scripts/compare_evals.py DIR1 DIR2 ... [--labels base,trained] [--out compare]

Each DIR is an ``eval.output_dir`` of ``python -m grpo_lambda.evaluate`` (its ``summary.json`` is read; a path to
a summary.json file works too). Rows are datasets and the paper's five-benchmark average, columns each run's
avg@k and pass@k, then Δ avg@k of each later run against the first one. Writes OUT.md and OUT.png (default
``compare.md`` / ``compare.png`` in the current folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpo_lambda.eval.report import compare, load_summary, plot_compare
from grpo_lambda.utils import atomic_write_text


def default_labels(dirs: list[Path]) -> list[str]:
    """Each folder's name (the folder above a summary.json file); repeated names get ``#2``, ``#3`` ..."""
    names = [(d.parent if d.is_file() else d).resolve().name or str(d) for d in dirs]
    out: list[str] = []
    for name in names:
        label, n = name, 1
        while label in out:
            n += 1
            label = f"{name}#{n}"
        out.append(label)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="evaluation output folders (each with summary.json)")
    p.add_argument("--labels", help="comma-separated run names, one per DIR (default: the folder names)")
    p.add_argument(
        "--out", default="compare", help="output stem: writes OUT.md and OUT.png (default: compare)"
    )
    args = p.parse_args(argv)

    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.dirs) or not all(labels) or len(set(labels)) != len(labels):
            p.error(f"--labels needs {len(args.dirs)} distinct non-empty names, got {args.labels!r}")
    else:
        labels = default_labels(args.dirs)
    try:
        summaries = {label: load_summary(d) for label, d in zip(labels, args.dirs)}
    except (FileNotFoundError, ValueError) as e:
        print(f"compare_evals: error: {e}", file=sys.stderr)
        return 2

    out = Path(args.out)
    if out.suffix in (".md", ".png"):
        out = out.with_suffix("")
    md_path, png_path = Path(f"{out}.md"), Path(f"{out}.png")
    table = compare(summaries)
    print(table)
    atomic_write_text(md_path, table + "\n")
    plot_compare(summaries, png_path)
    print(f"\nwrote {md_path} and {png_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
