"""Outcome counts and latencies of a batch of checks as metrics with stable names (``verifier/...``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from grpo_lambda.rewards.spec import OUTCOMES, VerifyResult


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values``; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def outcome_metrics(results: Sequence[VerifyResult], wall_s: float | None = None) -> dict[str, float]:
    """``verifier/checks``, ``verifier/<outcome>_rate`` for every outcome, ``verifier/reward_mean``,
    ``verifier/latency_{p50,p99,max}_s``, given the batch's wall time ``verifier/checks_per_s``, and for verifiers
    that say where a response first fails (chain) ``verifier/first_error/<where>_rate`` for every place seen in the
    batch (a place not logged at a step had no failure there)."""
    n = len(results)
    metrics: dict[str, float] = {"verifier/checks": float(n)}
    for outcome in OUTCOMES:
        count = sum(r.outcome == outcome for r in results)
        metrics[f"verifier/{outcome}_rate"] = count / n if n else 0.0
    metrics["verifier/reward_mean"] = sum(r.reward for r in results) / n if n else 0.0
    latencies = [r.latency_s for r in results]
    metrics["verifier/latency_p50_s"] = percentile(latencies, 50)
    metrics["verifier/latency_p99_s"] = percentile(latencies, 99)
    metrics["verifier/latency_max_s"] = max(latencies, default=0.0)
    for where in sorted({r.where for r in results if r.where}):
        metrics[f"verifier/first_error/{where}_rate"] = sum(r.where == where for r in results) / n
    if wall_s is not None:
        metrics["verifier/checks_per_s"] = n / wall_s if wall_s > 0 else 0.0
    return metrics
