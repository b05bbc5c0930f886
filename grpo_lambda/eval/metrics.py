"""avg@k, the unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code")
and maj@k (majority vote over extracted answers).

For a problem with n samples of which c are correct:

    avg@n   = c / n                                  (mean accuracy over samples)
    pass@k  = 1 − C(n − c, k) / C(n, k)              (probability that k of the n samples, drawn without
                                                      replacement, hold a correct one; unbiased for k ≤ n)

pass@k is computed as the stable product 1 − Π_{i=n−c+1}^{n} (1 − k / i), which equals the closed form
without the huge binomials: C(n − c, k) / C(n, k) = Π_{i=n−c+1}^{n} (i − k) / i.

    maj@k   = [the answer given by most of the k samples is correct]          (see :func:`maj_at_k` for ties)

Benchmark-level numbers are the means of these per-problem values over the problems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c correct: 1 − C(n − c, k) / C(n, k).

    Evaluated as 1 − Π_{i=n−c+1}^{n} (1 − k / i) (Chen et al. 2021); 1.0 when n − c < k (every k-subset holds
    a correct sample). Raises ValueError unless 0 ≤ c ≤ n and 1 ≤ k ≤ n.
    """
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
    """Mean accuracy over one problem's samples: avg@n = c / n (0.0 for no samples)."""
    return sum(bool(x) for x in correct) / len(correct) if correct else 0.0


def pass_ks(k: int) -> list[int]:
    """The pass@j columns reported for k samples: powers of two up to k, plus k itself if it is not one.

    ``pass_ks(16) == [1, 2, 4, 8, 16]``, ``pass_ks(12) == [1, 2, 4, 8, 12]``, ``pass_ks(1) == [1]``.
    """
    if k < 1:
        raise ValueError(f"need k >= 1, got k={k}")
    out, j = [], 1
    while j <= k:
        out.append(j)
        j *= 2
    if out[-1] != k:
        out.append(k)
    return out


def _same_stripped(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    same: Callable[[str, str], bool] | None = None,
) -> float:
    """Majority vote over one problem's k extracted answers: 1.0 if the most frequent answer is correct.

    Args:
        answers: the extracted final answer of each sample; ``None`` (or a blank string) means no answer
            and does not vote.
        correct: each sample's correctness, aligned with ``answers``.
        same: equivalence of two answers, ``same(a, b) -> bool`` (e.g. the verifier's, so that "1/2" and
            "0.5" vote together); default: string equality after ``strip()``.

    Answers are grouped into equivalence classes: each answer joins the first class whose first member
    (its representative) it is ``same`` as, else starts a new class (for a transitive ``same`` this is the
    usual partition). A class is correct when a strict majority of its members' ``correct`` flags are set
    (they should agree, since its members are equivalent). With m = the size of the largest class and
    T = the classes of size m (the tied winners):

        maj@k = |{t ∈ T : t correct}| / |T|

    i.e. the expected score of breaking the tie uniformly at random, which does not depend on the order of
    the samples. No answer at all gives 0.0.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length: {len(answers)} vs {len(correct)}")
    eq = same or _same_stripped
    classes: list[tuple[str, list[bool]]] = []  # (representative, members' correct flags)
    for answer, ok in zip(answers, correct):
        if answer is None or not str(answer).strip():
            continue
        answer = str(answer)
        for rep, flags in classes:
            if eq(rep, answer):
                flags.append(bool(ok))
                break
        else:
            classes.append((answer, [bool(ok)]))
    if not classes:
        return 0.0
    top = max(len(flags) for _, flags in classes)
    winners = [flags for _, flags in classes if len(flags) == top]
    return sum(2 * sum(flags) > len(flags) for flags in winners) / len(winners)


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
