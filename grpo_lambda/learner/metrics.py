"""The learner's metrics: summed per rank over a train_step, then combined over ranks on the driver."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

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


class StepTally:
    """What one `train_step` adds up over its updates: loss, gradient norm and loss metrics of the *applied*
    updates (a skipped update's would be inf/NaN and poison every average), the engine-vs-learner mismatch, and
    the positions computed against the real ones (padding)."""

    def __init__(self) -> None:
        self.loss_metrics, self.mismatch = TokenWeighted(), TokenWeighted()
        self.loss_total = self.grad_norm_total = 0.0
        self.positions = self.real_positions = self.applied = self.skipped = 0

    def count_positions(self, mb: Any, packed: bool) -> None:
        from .packing import packed_positions

        computed, real = (
            packed_positions(mb) if packed else (mb.input_ids.numel(), int(mb.attention_mask.sum()))
        )
        self.positions, self.real_positions = self.positions + computed, self.real_positions + real

    def end_update(
        self, engine: Any, update: TokenWeighted, update_loss: float, manual_norm: float | None
    ) -> None:
        """After an update's last micro-batch: keep it if the engine applied it, else count it skipped (weights,
        optimiser state and LR schedule are then as they were before it)."""
        if engine.was_step_applied():
            norm = engine.get_global_grad_norm() if manual_norm is None else manual_norm
            self.grad_norm_total += float(norm) if norm is not None else float("nan")
            self.loss_total += update_loss
            self.loss_metrics.merge(update)
            self.applied += 1
        else:
            self.skipped += 1

    def metrics(self, last_update: TokenWeighted, epochs: int, lr: float, updates_total: int,
                skipped_total: int) -> dict[str, float]:  # fmt: skip
        """This rank's step metrics; with no update applied the loss numbers are NaN (null in metrics.jsonl,
        docs/faults.md)."""
        nan, applied = float("nan"), self.applied
        means = self.loss_metrics.means() if applied else dict.fromkeys(last_update.sums, nan)
        return {
            **means,
            **self.mismatch.means(),
            "learner/loss": self.loss_total / applied if applied else nan,
            "learner/num_tokens": self.loss_metrics.tokens
            / epochs,  # of applied updates: weights the ranks' means
            "learner/grad_norm": self.grad_norm_total / applied if applied else nan,
            "learner/lr": lr,
            "learner/num_updates": float(applied + self.skipped),
            "learner/updates_total": float(updates_total),
            "learner/skipped_steps": float(self.skipped),
            "learner/skipped_steps_total": float(skipped_total),
            "learner/padding_frac": 1.0
            - self.real_positions / max(self.positions, 1),  # of the positions computed
        }
