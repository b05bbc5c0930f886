"""Evaluation: avg@k and unbiased pass@k over math benchmarks."""

from .metrics import avg_at_k, pass_at_k, summarize_correctness

__all__ = ["avg_at_k", "pass_at_k", "summarize_correctness"]
