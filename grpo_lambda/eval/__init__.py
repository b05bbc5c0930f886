"""Evaluation: avg@k, unbiased pass@k and maj@k over math benchmarks; summaries, tables and charts (report)."""

from .metrics import avg_at_k, maj_at_k, pass_at_k, pass_ks, summarize_correctness

__all__ = ["avg_at_k", "maj_at_k", "pass_at_k", "pass_ks", "summarize_correctness"]
