"""Checks in child processes under a hard wall-clock limit: ``SubprocessWorkers``.

Each child receives chunks of requests over a pipe and checks them one at a time, sending one result per
item. The parent waits on all children at once (``multiprocessing.connection.wait``) and enforces a deadline
per item: a child that has not answered ``timeout_s + kill_grace_s`` after it started an item is killed
(SIGKILL), that item becomes ``timeout`` and the rest of its chunk is re-queued on a fresh child. A child
that dies (OOM-killed, segfault, killed by PID) is replaced the same way; the item it was checking is retried
once, and becomes ``error`` if it kills a second child.

Inside the child, an interval timer (``setitimer``, the child's main thread, so signals work) raises
``CheckTimeout`` at ``timeout_s``: a slow check in Python code ends as ``timeout`` without losing the process.
The parent's kill is the guarantee for everything else (C loops such as huge integer powers never see the
signal). ``CheckTimeout`` derives from ``BaseException`` so that the ``except Exception`` blocks in sympy and
math-verify cannot swallow it (a swallowed timeout would silently grade the sample 0, as if it were wrong).

Children are forked from a zygote: one clean interpreter (``python -m grpo_lambda.rewards.zygote``) that
imported and warmed up math-verify once. A replacement child starts in milliseconds, shares the zygote's
memory copy-on-write, never re-imports the parent's ``__main__`` (as multiprocessing's spawn/forkserver
would: a training script that imports torch and vLLM) and is never forked from a multi-threaded parent (a
Ray worker). Each child caps its address space (``memory_limit_mb``) and is SIGKILLed when the zygote exits;
the zygote exits when its owner closes the control socket or dies.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from grpo_lambda.rewards.spec import ERROR, TIMEOUT, VerifyRequest, VerifyResult
from grpo_lambda.rewards.verifiers import check, get_verifier


# ------------------------------------------------------------------------------------------- child side
class CheckTimeout(BaseException):
    """Raised in a child by its interval timer when one check runs past ``timeout_s``."""


def _raise_timeout(signum, frame):
    raise CheckTimeout


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (``PR_SET_PDEATHSIG``); a no-op elsewhere."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _check_with_alarm(request: VerifyRequest, timeout_s: float) -> VerifyResult:
    start = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return check(request)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CheckTimeout:
        elapsed = time.perf_counter() - start
        return VerifyResult(
            float(request.wrong), TIMEOUT, elapsed, f"check interrupted after {timeout_s:g} s"
        )


def child_main(conn: Connection, timeout_s: float | None, memory_limit_mb: int | None) -> None:
    """Child loop: receive a chunk ``[(index, VerifyRequest), ...]``, answer ``(index, VerifyResult)`` per item;
    ``None`` or a closed connection ends it. ``timeout_s=None``: no in-process interruption (the parent kills)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _raise_timeout)
    if memory_limit_mb:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for index, request in chunk:
            result = check(request) if timeout_s is None else _check_with_alarm(request, timeout_s)
            conn.send((index, result))


# ------------------------------------------------------------------------------------------ parent side
class _Zygote:
    """Client of one ``grpo_lambda.rewards.zygote`` process: ``fork_child()`` returns ``(pid, Connection)``."""

    def __init__(self, warm_parser: bool = True) -> None:
        self._ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # importable even without `pip install -e`
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "grpo_lambda.rewards.zygote", str(theirs.fileno())]
            + ([] if warm_parser else ["--no-warm-parser"]),
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()

    def fork_child(self, timeout_s: float | None, memory_limit_mb: int | None) -> tuple[int, Connection]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = struct.pack("dq", timeout_s or 0.0, memory_limit_mb or 0)
        try:
            socket.send_fds(self._ctl, [request], [theirs.fileno()])
            reply = self._ctl.recv(8)
        except OSError as e:
            raise RuntimeError(f"verifier zygote (pid {self._proc.pid}) is gone: {e}") from e
        finally:
            theirs.close()
        if len(reply) != 8:
            code = self._proc.poll()
            raise RuntimeError(
                f"verifier zygote (pid {self._proc.pid}) exited with code {code} before forking a worker; "
                "its traceback is on stderr (is math-verify installed in this interpreter?)"
            )
        (pid,) = struct.unpack("q", reply)
        return pid, Connection(ours.detach())

    def close(self) -> None:
        self._ctl.close()  # the zygote exits on EOF; its children get SIGKILL (PR_SET_PDEATHSIG)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@dataclass
class _Child:
    pid: int
    conn: Connection
    inflight: deque = field(default_factory=deque)  # request indices sent, unanswered; [0] is being checked
    started: float = 0.0  # time.monotonic() when inflight[0] started


class SubprocessWorkers:
    """``num_procs`` child processes that check requests with a hard per-check wall-clock limit.

    A check is interrupted inside its process at ``timeout_s`` (``interrupt_in_process``) and its process is
    killed and replaced at ``timeout_s + kill_grace_s`` if it has still not answered. Either way the result
    is ``timeout`` and the latency at most about ``timeout_s + kill_grace_s``. With ``warm_parser`` (default)
    the zygote spends ~3 s at start-up parsing common answer shapes, so children are fast from their first check.

    ``score(requests)`` spreads the requests over the children in chunks of ``chunk_size`` (amortising IPC)
    and returns one ``VerifyResult`` per request, in order. No request can make it raise; a broken
    environment (a zygote that cannot start) does.
    """

    def __init__(
        self,
        num_procs: int = 1,
        timeout_s: float = 5.0,
        chunk_size: int = 16,
        memory_limit_mb: int | None = 2048,
        kill_grace_s: float = 0.5,
        interrupt_in_process: bool = True,
        warm_parser: bool = True,
    ) -> None:
        if not isinstance(num_procs, int) or num_procs < 1:
            raise ValueError(f"num_procs must be an int >= 1, got {num_procs!r}")
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        if memory_limit_mb is not None and memory_limit_mb < 512:
            raise ValueError(
                f"memory_limit_mb must be None or >= 512 (sympy needs room), got {memory_limit_mb!r}"
            )
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        self.memory_limit_mb = memory_limit_mb
        self.hard_limit_s = float(timeout_s) + kill_grace_s
        self.interrupt_in_process = interrupt_in_process  # False: every timeout kills the process
        self.restarts = 0  # children replaced so far (after a timeout kill or a death)
        self.checks = 0  # requests scored so far
        self._children: list[_Child] = []
        self._zygote = _Zygote(warm_parser)
        try:
            self._children = [self._spawn() for _ in range(num_procs)]
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ processes
    def _spawn(self) -> _Child:
        soft_timeout_s = self.timeout_s if self.interrupt_in_process else None
        pid, conn = self._zygote.fork_child(soft_timeout_s, self.memory_limit_mb)
        return _Child(pid, conn)

    @staticmethod
    def _stop(child: _Child) -> None:
        child.conn.close()
        try:
            os.kill(child.pid, signal.SIGKILL)  # the zygote reaps it
        except ProcessLookupError:
            pass

    def _replace(self, slot: int) -> None:
        self._stop(self._children[slot])
        self._children[slot] = self._spawn()
        self.restarts += 1

    @property
    def pids(self) -> list[int]:
        """PIDs of the current children (tests kill these)."""
        return [c.pid for c in self._children]

    def stats(self) -> dict:
        """``checks`` scored, child ``restarts``, current child ``pids``."""
        return {"checks": self.checks, "restarts": self.restarts, "pids": self.pids}

    # --------------------------------------------------------------------------------------------- scoring
    def score(self, requests: Sequence[VerifyRequest]) -> list[VerifyResult]:
        """One ``VerifyResult`` per request, same order. Raises only for a malformed request list."""
        for i, request in enumerate(requests):
            if not isinstance(request, VerifyRequest):
                raise TypeError(f"requests[{i}] is a {type(request).__name__}, expected VerifyRequest")
        for name in {r.verifier for r in requests}:
            get_verifier(name)  # a config error, not a model error: fail loudly, listing the names
        if not self._children:
            raise RuntimeError("SubprocessWorkers is closed")
        results: list[VerifyResult | None] = [None] * len(requests)
        queue = deque(range(len(requests)))
        deaths: Counter[int] = Counter()
        remaining = len(requests)
        while remaining:
            self._dispatch(requests, queue)
            busy = [c for c in self._children if c.inflight]
            if not busy:  # every send failed (children died while idle); dispatch again
                continue
            deadline = min(c.started for c in busy) + self.hard_limit_s
            ready = set(wait([c.conn for c in busy], timeout=max(0.0, deadline - time.monotonic())))
            for slot, child in enumerate(list(self._children)):
                if child.conn in ready:
                    remaining -= self._receive(slot, requests, results, queue, deaths)
            now = time.monotonic()
            for slot, child in enumerate(list(self._children)):
                if child.inflight and now - child.started > self.hard_limit_s:
                    index = child.inflight.popleft()
                    detail = f"check exceeded {self.timeout_s:g} s; worker process killed and replaced"
                    results[index] = VerifyResult(
                        float(requests[index].wrong), TIMEOUT, now - child.started, detail
                    )
                    remaining -= 1
                    queue.extendleft(reversed(child.inflight))
                    self._replace(slot)
        self.checks += len(requests)
        return results  # type: ignore[return-value]

    def _dispatch(self, requests: Sequence[VerifyRequest], queue: deque) -> None:
        """Send the next chunk to every idle child (replacing a child found dead)."""
        for slot in range(len(self._children)):
            if not queue or self._children[slot].inflight:
                continue
            chunk = [queue.popleft() for _ in range(min(self.chunk_size, len(queue)))]
            child = self._children[slot]
            try:
                child.conn.send([(i, requests[i]) for i in chunk])
            except OSError:  # it died while idle: nothing started, re-queue the chunk
                queue.extendleft(reversed(chunk))
                self._replace(slot)
                continue
            child.inflight.extend(chunk)
            child.started = time.monotonic()

    def _receive(self, slot, requests, results, queue, deaths) -> int:
        """Read one message from a ready child; returns how many requests it finished (0 or 1)."""
        child = self._children[slot]
        try:
            index, result = child.conn.recv()
        except (EOFError, OSError):  # the child died: retry its current item once, re-queue the rest
            finished = 0
            if child.inflight:
                index = child.inflight.popleft()
                deaths[index] += 1
                if deaths[index] >= 2:
                    detail = "worker process died twice while checking this item (killed, or out of memory)"
                    results[index] = VerifyResult(float(requests[index].wrong), ERROR, 0.0, detail)
                    finished = 1
                else:
                    child.inflight.appendleft(index)
            queue.extendleft(reversed(child.inflight))
            child.inflight.clear()
            self._replace(slot)
            return finished
        results[index] = result
        child.inflight.popleft()
        child.started = time.monotonic()
        return 1

    # ---------------------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Stop all children and the zygote (idempotent)."""
        for child in self._children:
            try:
                child.conn.send(None)
            except OSError:
                pass
            child.conn.close()
        self._children = []
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def __enter__(self) -> SubprocessWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close(); the zygote would also exit with this process
        if getattr(self, "_zygote", None) is not None:
            try:
                self.close()
            except Exception:  # interpreter shutdown: modules may be half torn down; nothing to report to
                pass
