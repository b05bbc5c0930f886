"""RolloutWorker: a thin Ray actor around one VLLMEngine (methods unpack, call the engine, pack).

RolloutWorkerActor = make_rollout_worker_cls(num_cpus=1, num_gpus=0)
worker = RolloutWorkerActor.remote(model_path, dtype="float32", max_model_len=1024)
ray.get(worker.ready.remote())
samples = ray.get(worker.generate.remote(prompt_ids, SamplingSpec(n=8, max_tokens=512)))
ray.get(worker.load_weights.remote(ray.put(state_dict), version=1))   # an ObjectRef argument is resolved by Ray
"""

from __future__ import annotations

import os

import torch

from grpo_lambda.rollout.engine import Sample, SamplingSpec
from grpo_lambda.rollout.vllm_engine import VLLMEngine, vllm_env_vars

_REPORTED_ENV = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_ALLOW_INSECURE_SERIALIZATION",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
)


class RolloutWorker:
    """The actor body; `make_rollout_worker_cls` turns it into a Ray actor class with the right environment."""

    def __init__(self, model_path: str, **engine_kwargs) -> None:
        self.engine = VLLMEngine(model_path, **engine_kwargs)

    def ready(self) -> dict:
        """Blocks until the engine is up; reports what a caller may want to log or check."""
        return {
            "pid": os.getpid(),
            "engine_start_s": self.engine.start_s,
            "weights_version": self.engine.weights_version(),
            "on_cpu": self.engine.on_cpu,
            "env": {k: os.environ.get(k, "") for k in _REPORTED_ENV},
            "tcmalloc_loaded": _library_loaded("libtcmalloc"),
        }

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[list[Sample]]:
        return self.engine.generate(prompt_ids, spec)

    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(named_tensors, version)
        return self.engine.weights_version()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def init_weight_sync(self, host: str, port: int, world_size: int, rank_offset: int, **kwargs) -> None:
        self.engine.init_weight_sync(host, port, world_size, rank_offset, **kwargs)

    def receive_weights(self, version: int) -> dict[str, int]:
        return self.engine.receive_weights(version)

    def verify_weights(self, named_tensors: dict[str, torch.Tensor], atol: float = 0.0) -> list[str]:
        return self.engine.verify_weights(named_tensors, atol)

    def weight_checksums(self, names: list[str] | None = None) -> dict[str, float]:
        return self.engine.weight_checksums(names)

    def weights_version(self) -> int:
        return self.engine.weights_version()

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def shutdown(self) -> None:
        self.engine.shutdown()


def _library_loaded(name: str) -> bool:
    """Whether a shared library whose file name contains `name` is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            return any(name in line for line in maps)
    except OSError:
        return False


def rollout_worker_runtime_env(num_gpus: float, extra_env: dict[str, str] | None = None) -> dict:
    """runtime_env for a rollout actor: vLLM's in-process mode, no CPU pinning, tcmalloc where installed."""
    env = vllm_env_vars(on_cpu=num_gpus == 0)
    env.update(extra_env or {})
    return {"env_vars": env}


def make_rollout_worker_cls(
    num_cpus: float = 1, num_gpus: float = 0, extra_env: dict[str, str] | None = None
):
    """The Ray actor class of RolloutWorker with its resources and environment (CPU engine when num_gpus == 0)."""
    import ray

    return ray.remote(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        runtime_env=rollout_worker_runtime_env(num_gpus, extra_env),
    )(RolloutWorker)
