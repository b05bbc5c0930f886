"""Statistics for the study report: mean ± s.e., steps to a target, Student t quantiles, t-intervals, exact sign-flip and permutation
p-values, Holm's correction and a t-based sample size. Standard library + numpy only (no scipy).

With 3-5 seeds per arm a percentile bootstrap is anti-conservative: over n = 3 pairs it returns about the range
[min d, max d], which covers the true mean only 1 - 2 * 2^-3 = 75 % of the time (symmetric differences), and about
84 % at n = 5 (tests/unit/test_study_stats.py simulates both). The t-interval keeps its 95 % under normality at any
n >= 2; the sign-flip test is exact without it, but over n pairs its smallest two-sided p is 2 / 2^n (0.25 at n = 3,
0.0625 at n = 5): below 6 pairs it cannot reach p < 0.05 at all.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import numpy as np

EXACT_MAX_PAIRS = 20  # sign-flip: all 2^n assignments up to here, else MONTE_CARLO random ones
EXACT_MAX_SPLITS = 200_000  # unpaired permutation: all C(n_a + n_b, n_a) splits up to here
MONTE_CARLO = 100_000


# --------------------------------------------------------------------------------------------- descriptive
def mean_se(values: list[float | None]) -> dict[str, Any]:
    """{mean, se, n}: se = sd / sqrt(n) with sd of ddof 1 (None for n < 2); None values left out."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "se": se, "n": len(xs)}


def steps_to_reach(steps: list[int], curve: list[float], target: float, window: int) -> int | None:
    """First step t where the trailing mean of `curve` over `window` points ending at t is >= target (full windows
    only; the whole curve when it is shorter than `window`); None if never."""
    if not curve:
        return None
    w = max(1, min(window, len(curve)))
    csum = np.cumsum(np.concatenate([[0.0], np.asarray(curve, dtype=float)]))
    for i in range(w - 1, len(curve)):
        if (csum[i + 1] - csum[i + 1 - w]) / w >= target - 1e-12:
            return steps[i]
    return None


# --------------------------------------------------------------------------------------------- Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t), T ~ Student t with df degrees of freedom: 1 - I_{df/(df+t²)}(df/2, 1/2) / 2 for t >= 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1): t_cdf inverted by bisection to ~1e-12 (t_{0.975,2} = 4.303)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------- intervals
def t_interval(d: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Paired t-interval of mean(d): mean ± t_{(1+level)/2, n-1} · sd / sqrt(n), sd with ddof 1; None for n < 2."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return None
    half = t_quantile((1 + level) / 2, len(d) - 1) * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def welch_interval(
    a: list[float] | np.ndarray, b: list[float] | np.ndarray, level: float = 0.95
) -> tuple[float, float] | None:
    """Welch t-interval of mean(a) - mean(b): diff ± t_{(1+level)/2, ν} · se, se² = v_a/n_a + v_b/n_b,
    ν = se⁴ / ((v_a/n_a)²/(n_a-1) + (v_b/n_b)²/(n_b-1)) (Welch-Satterthwaite); None when either n < 2."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    diff = float(a.mean() - b.mean())
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    if va + vb == 0.0:
        return diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile((1 + level) / 2, df) * math.sqrt(va + vb)
    return diff - half, diff + half


# --------------------------------------------------------------------------------------------- p-values
def _tol(x: np.ndarray) -> float:
    return 1e-9 * max(1.0, float(np.abs(x).sum()))  # float ties (0.01 - 0.02 + 0.01) count as ties


def sign_flip_p(d: list[float] | np.ndarray, seed: int = 0) -> float | None:
    """Two-sided exact sign-flip (paired permutation) p-value of mean(d) = 0:
    p = #{s ∈ {±1}^n : |Σ s_i d_i| >= |Σ d_i|} / 2^n over all 2^n sign assignments (n <= EXACT_MAX_PAIRS; beyond,
    (1 + hits) / (1 + MONTE_CARLO) over random ones, numpy default_rng(seed)). None for n = 0."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return None
    observed = abs(float(d.sum())) - _tol(d)
    if n > EXACT_MAX_PAIRS:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(MONTE_CARLO, n))
        return (1 + int((np.abs(signs @ d) >= observed).sum())) / (1 + MONTE_CARLO)
    hits, chunk = 0, 1 << min(n, 12)
    bits = (np.arange(chunk)[:, None] >> np.arange(min(n, 12))) & 1
    low = (1 - 2 * bits) @ d[: min(n, 12)]  # sums of every sign pattern of the first <= 12 values
    for high_signs in itertools.product((1.0, -1.0), repeat=n - min(n, 12)):
        rest = float(np.dot(high_signs, d[min(n, 12) :])) if high_signs else 0.0
        hits += int((np.abs(low + rest) >= observed).sum())
    return hits / 2**n


def permutation_p(a: list[float] | np.ndarray, b: list[float] | np.ndarray, seed: int = 0) -> float | None:
    """Two-sided exact permutation p-value of mean(a) = mean(b), unpaired: the fraction of the C(n_a + n_b, n_a)
    splits of the pooled values into groups of n_a and n_b with |mean_a* - mean_b*| >= |mean_a - mean_b|
    (all splits up to EXACT_MAX_SPLITS, else (1 + hits) / (1 + MONTE_CARLO) random ones). None if a or b is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return None
    pooled, na, total = np.concatenate([a, b]), len(a), float(np.concatenate([a, b]).sum())
    nb = len(pooled) - na

    def stat(sum_a: np.ndarray | float) -> np.ndarray | float:
        return np.abs(sum_a / na - (total - sum_a) / nb)

    observed = float(stat(float(a.sum()))) - _tol(pooled) / min(na, nb)
    if math.comb(len(pooled), na) <= EXACT_MAX_SPLITS:
        sums = np.array([pooled[list(idx)].sum() for idx in itertools.combinations(range(len(pooled)), na)])
        return float((stat(sums) >= observed).mean())
    rng = np.random.default_rng(seed)
    sums = pooled[rng.random((MONTE_CARLO, len(pooled))).argsort(axis=1)[:, :na]].sum(axis=1)
    return (1 + int((stat(sums) >= observed).sum())) / (1 + MONTE_CARLO)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the non-None p-values (the family, m of them): with p_(1) <= ... <= p_(m),
    adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) · p_(j)); reject at α where adjusted <= α. None stays None."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), list(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


# --------------------------------------------------------------------------------------------- power
def seeds_needed(
    sd: float | None, delta: float | None, alpha: float = 0.05, power: float = 0.8, paired: bool = True
) -> int | None:
    """The smallest n >= 2 with n >= ((t_{1-α/2, ν} + t_{power, ν}) · sd / δ)², ν = n - 1 paired (n pairs) or
    2n - 2 unpaired (n per arm, sd = sd of the difference): the t-test's sample size (the usual approximation of
    the noncentral t); None when sd or δ is unknown or δ = 0."""
    if sd is None or delta is None or delta == 0:
        return None
    nd = statistics.NormalDist()
    ratio = (sd / abs(delta)) ** 2
    n = max(
        2, math.ceil(ratio * (nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)) ** 2 - 1e-9)
    )  # normal: a floor
    if n > 10**6:
        return n
    while True:
        df = n - 1 if paired else 2 * n - 2
        if n >= ratio * (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) ** 2 - 1e-9:
            return n
        n += 1


def min_sign_flip_p(n: int) -> float:
    """The smallest two-sided sign-flip p-value n pairs can give: 2 / 2^n (all differences of one sign)."""
    return min(1.0, 2.0 / 2**n)
