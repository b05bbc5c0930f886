"""Plot the λ-trace weights w(t, k) that one token of a response gives its earlier tokens, per style and anchor.

    python scripts/plot_trace_weights.py [--length 300] [--token 150] [--horizon 3072] [--lam 0.99]
        [--out docs/img/trace_weights.png]

Three panels (styles recent / both / early), one line per anchor (token: the paper's text; sequence: the authors'
per-sequence branch; horizon: the authors' default code path with n = --horizon), on a log scale, floor 1e-7 as in the
authors' code. The weights come from the shared dense reference (grpo_lambda/algorithms/dense_reference.py).
"""

from __future__ import annotations

import argparse

import torch

from grpo_lambda.algorithms.dense_reference import dense_trace_weights

ANCHOR_LABELS = {
    "token": "token (paper)",
    "sequence": "sequence",
    "horizon": "horizon n={n} (authors' default)",
}
LINE_STYLES = {"token": "-", "sequence": "--", "horizon": ":"}  # overlapping lines stay visible


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=300, help="response tokens")
    p.add_argument(
        "--token", type=int, default=150, help="t: whose weights (mid-response: the anchors differ)"
    )
    p.add_argument("--horizon", type=int, default=3072, help="n of the horizon anchor (max response tokens)")
    p.add_argument("--lam", type=float, default=0.99)
    p.add_argument("--floor", type=float, default=1e-7)
    p.add_argument("--out", default="docs/img/trace_weights.png")
    args = p.parse_args()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mask = torch.ones(1, args.length, dtype=torch.bool)
    t = args.token
    fig = Figure(figsize=(11, 3.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    for ax, style in zip(axes, ("recent", "both", "early")):
        for anchor, label in ANCHOR_LABELS.items():
            w = dense_trace_weights(mask, gamma=1.0, lam=args.lam, style=style, anchor=anchor, floor=args.floor,
                                    horizon=args.horizon)[0, t, :t]  # fmt: skip
            ax.plot(
                range(t), w.numpy(), LINE_STYLES[anchor], label=label.format(n=args.horizon), linewidth=2.2
            )
        ax.set_yscale("log")
        ax.set_title(f"style {style}")
        ax.set_xlabel(f"earlier token k < t = {t}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"w(t, k), γλ = {args.lam}")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Weights w(t={t}, k) in a {args.length}-token response (floor {args.floor:g})")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
