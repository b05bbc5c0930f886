"""SubprocessWorkers / VerifierPool in local mode (real child processes, no Ray): order, hard timeouts,
adversarial inputs, workers killed mid-check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from grpo_lambda.rewards import VerifierPool, VerifyRequest, check, outcome_metrics
from grpo_lambda.rewards.subprocess_worker import SubprocessWorkers

TIMEOUT_S = 1.0
TOWER = r"\boxed{9^{9^{9^{9}}}}"  # sympy would need years for this one

ADVERSARIAL = {
    "tower of powers": TOWER,
    "huge exponent": r"\boxed{10^{10^{10}}}",
    "huge factorial": r"\boxed{(10^{8})!}",
    "sqrt tower": r"\boxed{\sqrt{2}^{\sqrt{2}^{\sqrt{2}^{\sqrt{2}^{99999}}}}}",
    "megabyte output": "blah " * 250_000 + r"\boxed{" + "x+" * 200_000,
    "megabyte of digits": r"\boxed{" + "9" * 1_000_000 + "}",
    "deeply nested braces": r"\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "nested fractions": r"\boxed{" + r"\frac{1}{" * 40 + "2" + "}" * 40 + "}",
    "invalid unicode": "\ud800\udfff\x00 \\boxed{\ud800}",
    "empty": "",
    "none": None,
    "python": r"\boxed{__import__('os').system('true')}",
}


def mixed_batch() -> list[VerifyRequest]:
    requests = []
    for i in range(60):
        requests.append(VerifyRequest(rf"so \boxed{{{i}}}", str(i % 7)))  # fast path, some correct
        requests.append(VerifyRequest(rf"so \boxed{{\sqrt{{{i}}}}}", r"\sqrt{4}"))  # numeric check
        requests.append(VerifyRequest(rf"so \boxed{{x^{{{i % 4}}}+2x+1}}", "(x+1)^2"))  # math-verify
        requests.append(VerifyRequest(f"#### {i}", "12", verifier="gsm8k"))
    requests.append(VerifyRequest(None, "1"))
    return requests


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S, chunk_size=8, warm_parser=False) as p:
        yield p


def test_pool_matches_in_process_check_in_order():
    requests = mixed_batch()
    with VerifierPool(num_workers=2, timeout_s=20.0, chunk_size=8) as pool:  # generous: a loaded machine
        results = pool.score(requests)
        assert pool.score([]) == []
        metrics = outcome_metrics(results, wall_s=pool.last_wall_s)
    expected = [check(r) for r in requests]
    assert [(r.reward, r.outcome) for r in results] == [(e.reward, e.outcome) for e in expected]
    assert {r.outcome for r in results} == {"correct", "wrong", "unparsable"}
    assert metrics["verifier/checks"] == len(requests) and metrics["verifier/checks_per_s"] > 0


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_input_ends_in_time_and_pool_serves_next_batch(pool, name):
    start = time.monotonic()
    (result,) = pool.score([VerifyRequest(ADVERSARIAL[name], "3")])
    elapsed = time.monotonic() - start
    assert result.outcome in {"timeout", "unparsable", "wrong"}, result
    assert elapsed < TIMEOUT_S + 1.0 and result.latency_s < TIMEOUT_S + 1.0
    follow_up = pool.score([VerifyRequest(r"\boxed{3}", "3"), VerifyRequest(r"\boxed{\frac{6}{2}}", "3")])
    assert [r.outcome for r in follow_up] == ["correct", "correct"]


def test_adversarial_batch_together_with_normal_items(pool):
    adversarial = [VerifyRequest(text, "3") for text in ADVERSARIAL.values()]
    normal = [VerifyRequest(rf"\boxed{{{i}}}", "3") for i in range(10)]
    start = time.monotonic()
    results = pool.score(normal[:5] + adversarial + normal[5:])
    assert len(results) == 5 + len(adversarial) + 5
    assert [r.outcome for r in results[:5] + results[-5:]] == ["wrong"] * 3 + ["correct"] + ["wrong"] * 6
    assert all(r.latency_s < TIMEOUT_S + 1.0 for r in results)
    assert {r.outcome for r in results[5:-5]} <= {"timeout", "unparsable", "wrong"}
    timeouts = sum(r.outcome == "timeout" for r in results)
    assert timeouts >= 1  # the tower (others may be decided faster, e.g. 10^{10^{10}} != 3 numerically)
    # two workers share the timeouts: the batch takes about timeouts/2 x timeout, not more
    assert time.monotonic() - start < (timeouts / 2 + 2) * (TIMEOUT_S + 0.5)


def test_hard_kill_when_the_check_ignores_the_in_process_timer():
    with SubprocessWorkers(
        1, timeout_s=TIMEOUT_S, interrupt_in_process=False, kill_grace_s=0.3, warm_parser=False
    ) as workers:
        first_pid = workers.pids[0]
        start = time.monotonic()
        results = workers.score([VerifyRequest(TOWER, "3"), VerifyRequest(r"\boxed{3}", "3")])
        assert time.monotonic() - start < TIMEOUT_S + 1.0
        assert results[0].outcome == "timeout" and "killed" in results[0].detail
        assert results[1].outcome == "correct"  # re-queued on the replacement process
        assert workers.restarts == 1 and workers.pids[0] != first_pid
        assert _gone_within(first_pid, 5.0)  # the hung process is dead and reaped by the zygote


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def _kill_when_busy(workers: SubprocessWorkers, times: int) -> threading.Thread:
    """Kill the (single) worker process ``times`` times by PID, each time 0.3 s after it (re)appears."""

    def run():
        seen = set()
        for _ in range(times):
            deadline = time.monotonic() + 10
            while workers.pids[0] in seen and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
            pid = workers.pids[0]
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_worker_killed_mid_check_is_replaced_and_batch_completes():
    # symbolic comparisons (~20 ms each): the batch lasts about a second, the kill lands mid-batch
    requests = [VerifyRequest(rf"so \boxed{{x^{{{i}}}+2x+1}}", "(x+1)^2") for i in range(120)]
    with SubprocessWorkers(2, timeout_s=5.0, chunk_size=8, warm_parser=False) as workers:
        victim = workers.pids[0]
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        killer.start()
        start = time.monotonic()
        results = workers.score(requests)
        killer.join()
        assert time.monotonic() - start > 0.3, "batch finished before the kill; make it longer"
        assert workers.restarts >= 1 and victim not in workers.pids
    assert [r.outcome for r in results] == ["wrong"] * 2 + ["correct"] + ["wrong"] * 117


def test_item_that_kills_two_workers_is_an_error_and_the_rest_completes():
    requests = [VerifyRequest(TOWER, "3"), VerifyRequest(r"\boxed{3}", "3")]
    with SubprocessWorkers(1, timeout_s=30.0, interrupt_in_process=False, warm_parser=False) as workers:
        killer = _kill_when_busy(workers, times=2)
        results = workers.score(requests)
        killer.join(timeout=10)
        assert workers.restarts == 2
    assert results[0].outcome == "error" and "died twice" in results[0].detail
    assert results[1].outcome == "correct"


def test_bad_requests_fail_loudly_before_any_work(pool):
    with pytest.raises(ValueError, match="registered verifiers"):
        pool.score([VerifyRequest("x", "1", verifier="mathh")])
    with pytest.raises(TypeError, match=r"requests\[1\]"):
        pool.score([VerifyRequest("x", "1"), {"response": "x", "answer": "1"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_procs"):
        SubprocessWorkers(0)
    closed = VerifierPool(num_workers=1, warm_parser=False)
    closed.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        closed.score([VerifyRequest("x", "1")])


def test_ray_mode_needs_ray_initialised():
    """In a fresh interpreter (this session may already hold a Ray cluster from the integration tests)."""
    pytest.importorskip("ray")
    code = (
        "import ray\nfrom grpo_lambda.rewards import VerifierPool\nassert not ray.is_initialized()\n"
        "try:\n    VerifierPool(num_workers=1, use_ray=True)\nexcept RuntimeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ray.init()" in out.stdout


OWNER_SCRIPT = """
from grpo_lambda.rewards import VerifyRequest
from grpo_lambda.rewards.subprocess_worker import SubprocessWorkers
w = SubprocessWorkers(2, timeout_s=60, warm_parser=False, interrupt_in_process=False)
print(w._zygote._proc.pid, *w.pids, flush=True)
w.score([VerifyRequest(r"\\\\boxed{9^{9^{9^{9}}}}", "3")])  # hangs in a child until the owner dies
"""


def test_owner_killed_leaves_no_processes_behind():
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]  # zygote, child, child
        assert len(pids) == 3
        time.sleep(0.5)  # one child is now busy in the hung check
    finally:
        owner.kill()
        owner.wait()
    assert all(_gone_within(pid, 5.0) for pid in pids)
