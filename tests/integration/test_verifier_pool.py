"""VerifierPool on real Ray: 2 actors, each owning a worker subprocess. Order, spread, adversarial inputs,
a subprocess killed by PID mid-batch."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from grpo_lambda.rewards import VerifierPool, VerifyRequest, check, outcome_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUT_S = 1.0
ADVERSARIAL = [
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{(10^{8})!}",
    "blah " * 250_000 + r"\boxed{" + "x+" * 200_000,
    r"\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "\ud800 \\boxed{\udfff}",
    "",
    None,
]


@pytest.fixture(scope="module")
def pool(ray_local):
    """Generous timeout: these tests compare outcomes with in-process checks on a possibly loaded machine."""
    p = VerifierPool(num_workers=2, timeout_s=30.0, use_ray=True, chunk_size=8)
    try:
        yield p
    finally:
        p.shutdown()


def batch(n: int) -> list[VerifyRequest]:
    requests = []
    for i in range(n):
        requests.append(VerifyRequest(rf"so \boxed{{\frac{{{i}}}{{2}}}}", r"\frac{1}{2}"))
        requests.append(VerifyRequest(rf"so \boxed{{x^{{{i}}}+2x+1}}", "(x+1)^2"))  # symbolic, ~20 ms
        requests.append(VerifyRequest(f"#### {i}", "7", verifier="gsm8k"))
    return requests


def test_results_in_order_and_spread_over_both_actors(pool):
    before = [s["checks"] for s in pool.worker_stats()]
    requests = batch(40)
    results = pool.score(requests)
    assert [(r.reward, r.outcome) for r in results] == [(c.reward, c.outcome) for c in map(check, requests)]
    after = [s["checks"] for s in pool.worker_stats()]
    assert all(a > b for a, b in zip(after, before)), (before, after)  # both actors got chunks
    metrics = outcome_metrics(results, wall_s=pool.last_wall_s)
    assert metrics["verifier/correct_rate"] == pytest.approx(3 / 120)
    assert metrics["verifier/timeout_rate"] == 0.0 and metrics["verifier/checks_per_s"] > 0


def test_adversarial_inputs_end_in_time_and_next_batch_is_served(ray_local):
    requests = [VerifyRequest(text, "3") for text in ADVERSARIAL]
    with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S, use_ray=True, warm_parser=False) as pool:
        start = time.monotonic()
        results = pool.score(requests)
        elapsed = time.monotonic() - start
        follow_up = pool.score([VerifyRequest(r"\boxed{3}", "3")] * 10)
    assert all(r.outcome in {"timeout", "unparsable", "wrong"} for r in results), results
    assert all(r.latency_s < TIMEOUT_S + 1.0 for r in results)
    assert results[0].outcome == "timeout"  # the tower; (10^8)! is found != 3 numerically, in time
    assert elapsed < 2 * (TIMEOUT_S + 1.0) + 5.0
    assert {r.outcome for r in follow_up} == {"correct"}


def test_subprocess_killed_by_pid_mid_batch_is_replaced(pool):
    stats = pool.worker_stats()
    victim = stats[0]["pids"][0]
    restarts_before = sum(s["restarts"] for s in stats)
    requests = batch(100)  # 100 symbolic checks: seconds, the kill lands mid-batch
    killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    killer.start()
    start = time.monotonic()
    results = pool.score(requests)
    killer.join()
    assert time.monotonic() - start > 0.3, "batch finished before the kill; make it longer"
    assert [r.outcome for r in results] == [check(r).outcome for r in requests]
    # The next batch is served too. (If worker 0 had already finished its share of the batch when the kill
    # landed, its dead child is found when this batch reaches it: either way it is replaced before serving.)
    assert {r.outcome for r in pool.score([VerifyRequest(r"\boxed{3}", "3")] * 4)} == {"correct"}
    stats = pool.worker_stats()
    assert victim not in stats[0]["pids"]
    assert sum(s["restarts"] for s in stats) > restarts_before
