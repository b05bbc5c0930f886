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

    def receive_weights(self, version: int) -> dict[str, int]:
        with self._busy():
            return super().receive_weights(version)

    def load_weights(self, named_tensors, version: int) -> int:
        with self._busy():
            return super().load_weights(named_tensors, version)

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
class PendingGeneration:
    """A submitted `RolloutGroup.generate`: one Ray ref per engine that got prompts (engine w: prompts w, w+k, …)."""

    refs: list[Any]
    num_prompts: int
    num_engines: int


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
    in `model_path`; engine i samples with seed `trainer.seed + i`."""

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
        actor_cls = engine_actor_cls(num_cpus=1, num_gpus=gpus, extra_env=env)
        self.engines = [
            actor_cls.options(**placement.actor_options(i)).remote(
                model_path,
                r,
                dtype=r.engine_dtype(cfg.model.dtype),
                seed=cfg.trainer.seed + i,
                max_model_len=max_model_len or cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
                sleep_mode=self.sleep_mode,
            )  # fmt: skip
            for i in range(r.num_workers)
        ]
        try:
            ray.get([e.ready.remote() for e in self.engines])  # up, or its start-up error raised here
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
        shards = [prompts[i::k] for i in range(k)]
        refs = [e.generate_timed.remote([p.token_ids for p in s], spec)
                for e, s in zip(self.engines, shards) if s]  # fmt: skip
        return PendingGeneration(refs, len(prompts), k)

    def collect(self, pending: PendingGeneration) -> tuple[list[list[Sample]], dict[str, float]]:
        """Wait for a submitted generation: its samples in prompt order, and the engines' timing:
        `generate_s` (the slowest engine's generation seconds) and `idle_s` (mean idle seconds per engine since
        its previous report)."""
        import ray

        by_prompt: dict[int, list[Sample]] = {}
        stats = ray.get(pending.refs)
        for w, (out, _) in enumerate(stats):
            for j, group in enumerate(out):
                by_prompt[w + j * pending.num_engines] = group
        timing = {"generate_s": max(t["generate_s"] for _, t in stats),
                  "idle_s": sum(t["idle_s"] for _, t in stats) / len(stats)}  # fmt: skip
        return [by_prompt[i] for i in range(pending.num_prompts)], timing

    def wait(self, pending: list[PendingGeneration]) -> None:
        """Block until every given generation has finished (their results stay to be collected)."""
        import ray

        refs = [r for p in pending for r in p.refs]
        if refs:
            ray.wait(refs, num_returns=len(refs), fetch_local=False)

    def sleep(self) -> None:
        """Free the engines' GPU memory (sleep_mode only: a no-op call is not made)."""
        self._call_all("sleep")

    def wake_up(self) -> None:
        self._call_all("wake_up")

    def _call_all(self, method: str) -> None:
        import ray

        if self.sleep_mode:
            ray.get([getattr(e, method).remote() for e in self.engines])

    def shutdown(self) -> None:
        import ray

        for engine in self.engines:
            ray.kill(engine)
        self.engines = []
