import itertools
import math

import pytest

from grpo_lambda.eval import avg_at_k, pass_at_k, summarize_correctness


def brute_pass_at_k(n, c, k):
    """Fraction of all k-subsets of the n samples that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 5, 2), (8, 1, 8), (7, 3, 4)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_summary_and_errors():
    res = summarize_correctness([[True, False, False, False], [True, True, True, True]], ks=(1, 2))
    assert res["avg@4"] == pytest.approx(0.625)
    assert res["pass@1"] == pytest.approx(0.625)
    assert res["pass@2"] == pytest.approx((0.5 + 1) / 2)
    assert avg_at_k([]) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
