"""``VerifierPool``: grade batches of responses on N workers, locally or as Ray actors.

Local mode (``use_ray=False``; the CLI, unit tests): one ``SubprocessWorkers`` with ``num_workers``
processes. Ray mode: ``num_workers`` thin ``VerifierWorker`` actors, each owning ``procs_per_worker``
subprocesses; a batch is cut into chunks that are handed to whichever actor is free (two in flight per actor),
so one slow chunk does not hold up the rest. Either way every check runs in a subprocess under a hard
wall-clock limit (see ``subprocess_worker``), and ``score`` returns one ``VerifyResult`` per request, in order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import lru_cache

from grpo_lambda.rewards.spec import VerifyRequest, VerifyResult
from grpo_lambda.rewards.subprocess_worker import SubprocessWorkers
from grpo_lambda.rewards.verifiers import get_verifier


class VerifierWorker:
    """What one Ray actor holds: a ``SubprocessWorkers``. Methods unpack, call it, pack."""

    def __init__(
        self, procs: int, timeout_s: float, chunk_size: int, memory_limit_mb: int | None, warm: bool
    ) -> None:
        self.workers = SubprocessWorkers(procs, timeout_s, chunk_size, memory_limit_mb, warm_parser=warm)

    def score(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        return self.workers.score(requests)

    def stats(self) -> dict:
        """Checks done, subprocesses replaced, current subprocess PIDs."""
        return self.workers.stats()

    def close(self) -> None:
        self.workers.close()


@lru_cache(maxsize=1)
def _actor_class():
    import ray

    return ray.remote(VerifierWorker)


class VerifierPool:
    """Grade ``VerifyRequest`` batches with ``num_workers`` workers; see the module docstring.

    Args:
        num_workers: subprocesses (local) or Ray actors (``use_ray``).
        timeout_s: wall-clock limit of one check; a check that exceeds it ends as ``timeout``.
        use_ray: run the workers as Ray actors (Ray must be initialised).
        procs_per_worker: subprocesses per Ray actor.
        chunk_size: requests per message to a subprocess (amortises IPC).
        memory_limit_mb: address-space cap per subprocess (None: no cap).
        num_cpus_per_worker: Ray CPUs reserved by each actor.
        resources: custom Ray resources each actor asks for (pins the pool to nodes declaring them).
        warm_parser: pre-parse common answer shapes at start-up (~3 s once; faster first checks).
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        use_ray: bool = False,
        procs_per_worker: int = 1,
        chunk_size: int = 16,
        memory_limit_mb: int | None = 2048,
        num_cpus_per_worker: float = 1.0,
        warm_parser: bool = True,
        resources: dict[str, float] | None = None,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.use_ray = use_ray
        self.chunk_size = chunk_size
        self.last_wall_s = 0.0  # wall time of the last score() call
        self._local: SubprocessWorkers | None = None
        self._actors: list = []
        if not use_ray:
            self._local = SubprocessWorkers(
                num_workers, timeout_s, chunk_size, memory_limit_mb, warm_parser=warm_parser
            )
            return
        import ray

        if not ray.is_initialized():
            raise RuntimeError(
                "VerifierPool(use_ray=True) needs Ray: call ray.init() first (or use_ray=False)"
            )
        actor_cls = _actor_class().options(
            num_cpus=num_cpus_per_worker, resources=dict(resources or {}), max_restarts=3, max_task_retries=3
        )
        self._actors = [
            actor_cls.remote(procs_per_worker, timeout_s, chunk_size, memory_limit_mb, warm_parser)
            for _ in range(num_workers)
        ]
        ray.get([a.stats.remote() for a in self._actors])  # surface start-up errors here, not in score()

    def score(self, requests: Sequence[VerifyRequest]) -> list[VerifyResult]:
        """One ``VerifyResult`` per request, in order. Model text cannot make this raise."""
        requests = list(requests)
        for i, request in enumerate(requests):
            if not isinstance(request, VerifyRequest):
                raise TypeError(f"requests[{i}] is a {type(request).__name__}, expected VerifyRequest")
        for name in {r.verifier for r in requests}:
            get_verifier(name)
        start = time.perf_counter()
        if self._local is not None:
            results = self._local.score(requests)
        elif self._actors:
            results = self._score_ray(requests)
        else:
            raise RuntimeError("VerifierPool is shut down")
        self.last_wall_s = time.perf_counter() - start
        return results

    def _score_ray(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        import ray

        results: list[VerifyResult | None] = [None] * len(requests)
        size = max(self.chunk_size, math.ceil(len(requests) / (4 * len(self._actors))))
        chunks = [(lo, requests[lo : lo + size]) for lo in range(0, len(requests), size)]
        chunks.reverse()  # pop() from the end hands them out in order
        in_flight: dict = {}  # ObjectRef -> (first index, actor index)
        load = [0] * len(self._actors)
        while chunks or in_flight:
            for a in range(len(self._actors)):
                while chunks and load[a] < 2:
                    lo, chunk = chunks.pop()
                    in_flight[self._actors[a].score.remote(chunk)] = (lo, a)
                    load[a] += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                lo, a = in_flight.pop(ref)
                load[a] -= 1
                chunk_results = ray.get(ref)
                results[lo : lo + len(chunk_results)] = chunk_results
        return results  # type: ignore[return-value]

    def worker_stats(self) -> list[dict]:
        """Per worker: ``checks`` done, subprocess ``restarts`` (after timeouts or deaths), subprocess ``pids``.
        Local mode has a single worker."""
        if self._local is not None:
            return [self._local.stats()]
        import ray

        return ray.get([a.stats.remote() for a in self._actors])

    def shutdown(self) -> None:
        """Stop every subprocess and actor (idempotent)."""
        if self._local is not None:
            self._local.close()
            self._local = None
        if self._actors:
            import ray

            try:
                ray.get([a.close.remote() for a in self._actors], timeout=30)
            finally:
                for actor in self._actors:
                    ray.kill(actor)
                self._actors = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
