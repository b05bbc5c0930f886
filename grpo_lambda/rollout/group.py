"""The rollout engines as Ray actors, and the driver's handle on all of them.

    rollout = RolloutGroup(cfg, model_path, placement)      # cfg.rollout.num_workers engines, started and ready
    samples = rollout.generate(prompts, spec)              # [prompt][sample], spread over the engines
    pending = rollout.submit(prompts, spec)                # the same, without waiting (rollout/pipeline.py) ...
    samples, stats = rollout.collect(pending)              # ... and the engines' busy / idle seconds
    rollout.sleep(); ...; rollout.wake_up()                # colocated GPUs: free memory while the learner trains

Each actor *is* a `VLLMEngine` (`EngineActor` only adds where it runs and a start-up report), so a remote call goes
straight to the adapter. Weight sync talks to `rollout.engines` through distributed/weight_sync.py.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from grpo_lambda.config.schema import Config
from grpo_lambda.data.templates import Prompt
from grpo_lambda.rollout.sampling import Sample, SamplingSpec
from grpo_lambda.rollout.vllm_engine import VLLMEngine, vllm_env_vars

START_TIMEOUT_S = 600.0  # an engine's start-up deadline: at least this, else rollout.generate_timeout_s
_REPORTED_ENV = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_ALLOW_INSECURE_SERIALIZATION",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
)


class EngineActor(VLLMEngine):
    """Ray face of VLLMEngine: where it runs, what it started with, and how long it sat idle; all work is
    inherited. Idle time is the time between calls that do work (generate, weight updates), reported with the
    next `generate_timed`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._idle_since, self._idle_s = time.perf_counter(), 0.0

    @contextmanager
    def _busy(self):
        start = time.perf_counter()
        self._idle_s += start - self._idle_since
        try:
            yield start
        finally:
            self._idle_since = time.perf_counter()

    def generate_timed(
        self, prompt_ids: list[list[int]], spec: SamplingSpec
    ) -> tuple[list[list[Sample]], dict]:
        """`generate`, plus its seconds and the engine's idle seconds since the previous report."""
        with self._busy() as start:
            samples = self.generate(prompt_ids, spec)
        idle, self._idle_s = self._idle_s, 0.0
        return samples, {"generate_s": self._idle_since - start, "idle_s": idle}

    def receive_weights(self, version: int, resend: bool = False) -> dict[str, int]:
        with self._busy():
            return super().receive_weights(version, resend)

    def load_weights(self, named_tensors, version: int, resend: bool = False) -> int:
        with self._busy():
            return super().load_weights(named_tensors, version, resend)

    def ready(self) -> dict:
        """Returns once the engine is up: what a caller may want to log or check."""
        return {
            "pid": os.getpid(),
            "engine_start_s": self.start_s,
            "weights_version": self.weights_version(),
            "on_cpu": self.on_cpu,
            "env": {k: os.environ.get(k, "") for k in _REPORTED_ENV},
            "tcmalloc_loaded": _library_loaded("libtcmalloc"),
        }

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


@dataclass
class Shard:
    """One engine's part of a submitted generation: engine `index` (the actor `engine` at the time) was given
    `prompt_ids`; `ref` is its call. Kept whole so that a replaced engine's share can be generated again."""

    index: int
    engine: Any
    prompt_ids: list[list[int]]
    ref: Any


@dataclass
class PendingGeneration:
    """A submitted `RolloutGroup.generate`: one shard per engine that got prompts (engine w: prompts w, w+k, …)."""

    shards: list[Shard]
    num_prompts: int
    num_engines: int
    spec: SamplingSpec

    @property
    def refs(self) -> list[Any]:
        return [s.ref for s in self.shards]


class EngineFailure(RuntimeError):
    """A rollout engine died or missed its deadline more often than `rollout.max_engine_restarts` allows."""


def _library_loaded(name: str) -> bool:
    """Whether a shared library whose file name contains `name` is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            return any(name in line for line in maps)
    except OSError:
        return False


def engine_runtime_env(num_gpus: float, extra_env: dict[str, str] | None = None) -> dict:
    """runtime_env for an engine actor: vLLM's in-process mode, no CPU pinning, tcmalloc where installed."""
    env = vllm_env_vars(on_cpu=num_gpus == 0)
    env.update(extra_env or {})
    return {"env_vars": env}


def engine_actor_cls(num_cpus: float = 1, num_gpus: float = 0, extra_env: dict[str, str] | None = None):
    """The Ray actor class of EngineActor with its resources and environment (a CPU engine when num_gpus == 0)."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                      runtime_env=engine_runtime_env(num_gpus, extra_env))(EngineActor)  # fmt: skip


class RolloutGroup:
    """`cfg.rollout.num_workers` engine actors on the rollout role's bundles (`placement`), each with the weights
    in `model_path`; engine i samples with seed `trainer.seed + i`.

    Faults (docs/faults.md): every wait on an engine has a deadline (`rollout.generate_timeout_s`). An engine
    whose actor dies or that misses the deadline is killed and replaced by a new actor on its bundle;
    `on_replace(indices, push)` (set by the weight sync) then rebuilds the sync group and gives it the current
    weights, and its share of the generation is generated again. `restarts` counts replacements, bounded by
    `rollout.max_engine_restarts` (then `EngineFailure`)."""

    def __init__(
        self, cfg: Config, model_path: str, placement, gpus: float, max_model_len: int | None = None
    ):
        """`max_model_len` (prompt + response positions): default model.max_prompt_tokens + max_response_tokens."""
        import ray

        r, env = cfg.rollout, dict(cfg.cluster.env_vars)
        if gpus == 0 and not cfg.cluster.address:
            # A local CPU machine. Synchronous: rollout and learning take turns, so the engine may use every core
            # while it runs. Asynchronous: they run at once, and an engine with every core's OpenMP threads beside
            # the learner's slows both (measured: 22.5 s/step against 15.5 with one thread, docs/performance.md):
            # it keeps its 1-CPU reservation's single thread.
            threads = (os.cpu_count() or 1) if cfg.max_staleness_for(gpus) == 0 else 1
            env.setdefault("OMP_NUM_THREADS", str(threads))
        # Colocated GPUs: the engine frees its memory while the learner trains on the same device.
        self.sleep_mode = cfg.cluster.placement == "colocated" and gpus > 0
        self.timeout_s, self.max_restarts = r.generate_timeout_s, r.max_engine_restarts
        self.start_timeout_s = max(self.timeout_s, START_TIMEOUT_S)  # loading a model may take longer
        self.restarts = 0
        self.on_replace = None  # callback(indices, push): the weight sync's rejoin
        actor_cls = engine_actor_cls(num_cpus=1, num_gpus=gpus, extra_env=env)
        self._start = lambda i: actor_cls.options(**placement.actor_options(i)).remote(
            model_path,
            r,
            dtype=r.engine_dtype(cfg.model.dtype),
            seed=cfg.trainer.seed + i,
            max_model_len=max_model_len or cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
            sleep_mode=self.sleep_mode,
        )  # fmt: skip
        self.engines = [self._start(i) for i in range(r.num_workers)]
        try:
            ray.get(
                [e.ready.remote() for e in self.engines], timeout=self.start_timeout_s
            )  # up, or its error
        except BaseException:
            self.shutdown()
            raise

    def generate(self, prompts: list[Prompt], spec: SamplingSpec) -> list[list[Sample]]:
        """`spec.n` samples for each prompt, in prompt order; prompt i goes to engine i mod num_engines."""
        return self.collect(self.submit(prompts, spec))[0]

    def submit(self, prompts: list[Prompt], spec: SamplingSpec) -> PendingGeneration:
        """Start `generate` without waiting. Each engine runs its calls in order, so a weight update submitted
        later starts after this generation ends."""
        k = len(self.engines)
        shards = []
        for w, engine in enumerate(self.engines):
            ids = [p.token_ids for p in prompts[w::k]]
            if ids:
                shards.append(Shard(w, engine, ids, engine.generate_timed.remote(ids, spec)))
        return PendingGeneration(shards, len(prompts), k, spec)

    def collect(self, pending: PendingGeneration) -> tuple[list[list[Sample]], dict[str, float]]:
        """Wait for a submitted generation: its samples in prompt order, and the engines' timing:
        `generate_s` (the slowest engine's generation seconds) and `idle_s` (mean idle seconds per engine since
        its previous report). A shard whose engine died or missed the deadline is generated again by the
        engine's replacement (same per-prompt seeds, the current weights)."""
        by_prompt: dict[int, list[Sample]] = {}
        stats = [self._result(shard, pending.spec) for shard in pending.shards]
        for shard, (out, _) in zip(pending.shards, stats, strict=True):
            for j, group in enumerate(out):
                by_prompt[shard.index + j * pending.num_engines] = group
        timing = {"generate_s": max(t["generate_s"] for _, t in stats),
                  "idle_s": sum(t["idle_s"] for _, t in stats) / len(stats)}  # fmt: skip
        return [by_prompt[i] for i in range(pending.num_prompts)], timing

    def _result(self, shard: Shard, spec: SamplingSpec):
        """The shard's (samples, timing), replacing its engine and generating again while the engine fails."""
        import ray

        while True:
            try:
                return ray.get(shard.ref, timeout=self.timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                if self.engines[shard.index] is shard.engine:  # not replaced yet (a sync may have done it)
                    self.replace([shard.index], _failure(err, self.timeout_s, "generate"))
                shard.engine = self.engines[shard.index]
                shard.ref = shard.engine.generate_timed.remote(shard.prompt_ids, spec)

    def wait(self, pending: list[PendingGeneration]) -> None:
        """Block until every given generation has finished (their results stay to be collected). An engine
        that misses the deadline is killed; its shards fail and are generated again when collected, and the
        next weight push replaces it (`dead_engines`)."""
        import ray

        shards = [s for p in pending for s in p.shards]
        if not shards:
            return
        refs = [s.ref for s in shards]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s, fetch_local=False)
        done = set(ready)
        for s in shards:
            if s.ref not in done and self.engines[s.index] is s.engine:
                print(f"[grpo-lambda] rollout engine {s.index} missed its deadline "
                      f"(rollout.generate_timeout_s={self.timeout_s}): killed", flush=True)  # fmt: skip
                ray.kill(s.engine, no_restart=True)

    def dead_engines(self, grace_s: float = 10.0) -> list[int]:
        """Indices of engines whose actor is dead (asked with a `grace_s` deadline: an engine that does not
        answer in time counts as dead)."""
        import ray

        refs = [e.weights_version.remote() for e in self.engines]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=grace_s, fetch_local=False)
        dead = []
        for i, ref in enumerate(refs):
            try:
                if ref not in ready:
                    raise TimeoutError
                ray.get(ref)
            except (ray.exceptions.RayActorError, TimeoutError):
                dead.append(i)
        return dead

    def replace(self, indices: list[int], reason: str, push: bool = True) -> None:
        """Kill engines `indices` and start new ones on their bundles; then `on_replace(indices, push)` (the
        weight sync: rebuild its group and, with `push`, give every engine the current weights, checked by
        version). Raises EngineFailure past rollout.max_engine_restarts."""
        import ray

        for i in indices:
            self.restarts += 1
            if self.restarts > self.max_restarts:
                raise EngineFailure(
                    f"rollout engine {i} {reason}; that is restart {self.restarts}, more than "
                    f"rollout.max_engine_restarts={self.max_restarts} allows: stopping (resume with "
                    "trainer.resume=auto once the cause is fixed)"
                )
            print(f"[grpo-lambda] rollout engine {i} {reason}: starting a new one "
                  f"(restart {self.restarts} of at most {self.max_restarts})", flush=True)  # fmt: skip
            ray.kill(self.engines[i], no_restart=True)
            self.engines[i] = self._start(i)
        ray.get([self.engines[i].ready.remote() for i in indices], timeout=self.start_timeout_s)
        if self.on_replace is not None:
            self.on_replace(indices, push)

    def sleep(self) -> None:
        """Free the engines' GPU memory (sleep_mode only: a no-op call is not made)."""
        self._call_all("sleep")

    def wake_up(self) -> None:
        self._call_all("wake_up")

    def _call_all(self, method: str) -> None:
        import ray

        if self.sleep_mode:
            ray.get([getattr(e, method).remote() for e in self.engines], timeout=self.timeout_s)

    def shutdown(self) -> None:
        import ray

        for engine in self.engines:
            ray.kill(engine)
        self.engines = []


def _failure(err: BaseException, timeout_s: float, call: str) -> str:
    """How an engine failed, for the log and the error: died (Ray's reason) or missed its deadline."""
    import ray

    if isinstance(err, ray.exceptions.GetTimeoutError):
        return f"missed its deadline in {call} (rollout.generate_timeout_s={timeout_s})"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"died during {call} ({type(err).__name__}: {first[:200]})"
