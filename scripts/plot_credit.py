"""Draw a run's per-token credit over training (the `credit/*` metrics every step logs; docs/credit.md).

    python scripts/plot_credit.py runs/cpu_demo_grpo_lambda [--out runs/cpu_demo_grpo_lambda/credit.png]

Left: the credit profile, mean c_k per tenth of the response (rows) at each step (columns), on a log colour scale
(GRPO is 1 everywhere). Right: the first/last ratio, the share of the credit on the answer tokens beside their share
of the tokens, and what a response weighs per token (Σ_k c_k / L), over the steps.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DECILES = 10


def read_credit(run_dir: Path) -> tuple[list[int], list[dict[str, float]]]:
    """(steps, rows) of metrics.jsonl rows that carry credit metrics."""
    steps, rows = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "credit/decile_0" in row:
            steps.append(int(row["step"]))
            rows.append(row)
    if not rows:
        raise SystemExit(
            f"{run_dir}/metrics.jsonl has no credit/* metrics (a run from before they were logged?)"
        )
    return steps, rows


def plot(run_dir: Path, out: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    steps, rows = read_credit(run_dir)
    grid = [[row.get(f"credit/decile_{i}", math.nan) for row in rows] for i in range(DECILES)]
    positive = [v for line in grid for v in line if v == v and v > 0]
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    image = left.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                        norm=LogNorm(vmin=min(positive), vmax=max(positive)) if positive else None,
                        extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, DECILES - 0.5))  # fmt: skip
    fig.colorbar(image, ax=left, label="mean credit c_k (GRPO = 1)")
    left.set(xlabel="step", ylabel="tenth of the response (0 = first)", title="credit profile")
    for key, label in (("credit/first_last_ratio", "first / last token"),
                       ("credit/weight_per_token", "Σ c / L (per-token weight of a response)"),
                       ("credit/long_short_ratio", "longer half / shorter half")):  # fmt: skip
        values = [row.get(key, math.nan) for row in rows]
        if any(v == v for v in values):
            right.plot(steps, values, label=label)
    right.set_yscale("log")
    share = [row.get("credit/answer_share", math.nan) for row in rows]
    if any(v == v for v in share):
        twin = right.twinx()
        twin.plot(steps, share, "k--", label="answer tokens' share of credit")
        twin.plot(steps, [row.get("credit/answer_token_frac", math.nan) for row in rows], "k:",
                  label="answer tokens' share of tokens")  # fmt: skip
        twin.set(ylabel="share", ylim=(0, 1))
        twin.legend(loc="lower right", fontsize=8)
    right.set(xlabel="step", title="credit summaries")
    right.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{run_dir.name}: per-token credit of the policy gradient")
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: <run_dir>/credit.png")
    args = p.parse_args()
    print(f"wrote {plot(args.run_dir, args.out or args.run_dir / 'credit.png')}")


if __name__ == "__main__":
    main()
