"""avg@k and the unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

For a problem with n samples of which c are correct:

    avg@n   = c / n                                  (mean accuracy over samples)
    pass@k  = 1 − C(n − c, k) / C(n, k)              (probability that k of the n samples hold a correct one)

computed as the stable product 1 − Π_{i=n−c+1}^{n} (1 − k / i).
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean accuracy over one problem's samples."""
    return sum(bool(x) for x in correct) / len(correct) if correct else 0.0


def summarize_correctness(
    per_problem: Sequence[Sequence[bool]], ks: Sequence[int] = (1,)
) -> dict[str, float]:
    """Benchmark-level avg@n and pass@k (means over problems) from per-problem sample correctness."""
    if not per_problem:
        return {}
    n = min(len(p) for p in per_problem)
    out = {f"avg@{n}": sum(avg_at_k(p) for p in per_problem) / len(per_problem)}
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(len(p), sum(map(bool, p)), k) for p in per_problem) / len(
                per_problem
            )
    return out
