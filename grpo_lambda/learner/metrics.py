"""The learner's metrics: summed per rank over a train_step, then combined over ranks on the driver."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

# How ranks combine (reduce_rank_metrics): summed, global (every rank has the value: take rank 0's); keys ending in
# `_max` (and timings) take the maximum; everything else is a token-weighted mean.
# Skipped updates (a non-finite loss or gradient on some rank) are decided for all ranks alike: their counts are global.
SUMMED_METRICS = ("learner/loss", "learner/num_tokens")
GLOBAL_METRICS = ("learner/grad_norm", "learner/lr", "learner/num_updates", "learner/updates_total",
                  "learner/skipped_steps", "learner/skipped_steps_total")  # fmt: skip


class TokenWeighted:
    """Token-weighted means of per-micro-batch metrics (keys ending in `_max` keep the maximum instead)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.tokens = 0.0

    def add(self, metrics: Mapping[str, float], num_tokens: float) -> None:
        self.tokens += num_tokens
        for key, value in metrics.items():
            if key.endswith("_max"):
                self.sums[key] = max(self.sums[key], float(value))
            else:
                self.sums[key] += float(value) * num_tokens

    def merge(self, other: TokenWeighted) -> None:
        """Add another accumulator's micro-batches (e.g. one optimiser update's, once it was applied)."""
        self.tokens += other.tokens
        for key, value in other.sums.items():
            self.sums[key] = max(self.sums[key], value) if key.endswith("_max") else self.sums[key] + value

    def means(self) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {key: v if key.endswith("_max") else v / n for key, v in self.sums.items()}


def reduce_rank_metrics(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Combine the ranks' train_step metrics: loss shares and token counts are summed; global values (grad norm,
    lr) are taken from rank 0; timings and maxima (`*_max`) are the largest rank's; every other metric is a
    token-weighted mean."""
    if not per_rank:
        return {}
    tokens = [m.get("learner/num_tokens", 1.0) for m in per_rank]
    total = sum(tokens) or 1.0
    out = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        if key in SUMMED_METRICS:
            out[key] = sum(values)
        elif key in GLOBAL_METRICS:
            out[key] = values[0]
        elif key.startswith("time/") or key.endswith(("_s", "_max")):
            out[key] = max(values)
        else:
            out[key] = sum(v * n for v, n in zip(values, tokens)) / total
    return out
