"""What the trainer starts: Ray (local or joined), placement groups, the rollout workers and the weight-sync group.

Plain functions of the run's `Config`; `Trainer` calls them in order and keeps the handles.
"""

from __future__ import annotations

import os
import time
from typing import Any

from grpo_lambda.config import Config
from grpo_lambda.rollout.worker import make_rollout_worker_cls


def use_ray_token_if_available() -> bool:
    """Turn Ray's client token mode on when RAY_AUTH_MODE is unset and a token exists where Ray looks for one
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), as `ray start` itself does. A cluster started by
    `ray start` with a token requires it (Ray >= 2.59), and a client left in the default mode fails with a bare
    "Failed to connect"; a cluster without authentication ignores the token. Returns whether token mode is on."""
    try:  # Ray's own rule; it also refreshes Ray's cached config, which reads the mode once per process
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def init_ray(cfg: Config) -> None:
    """Join `cluster.address` or start a local Ray sized for this run's actors (logical CPUs may exceed cores)."""
    import ray

    if ray.is_initialized():
        return
    c = cfg.cluster
    env = {"TOKENIZERS_PARALLELISM": "false", **c.env_vars}
    if c.address:
        use_ray_token_if_available()
        ray.init(address=c.address, runtime_env={"env_vars": env})
        return
    needed = (cfg.rollout.num_workers + cfg.learner.world_size * cfg.learner.num_cpus_per_rank
              + cfg.reward.num_workers * 0.5 + 1)  # fmt: skip
    kwargs: dict[str, Any] = {}
    if c.bind_localhost:
        kwargs["_node_ip_address"] = "127.0.0.1"
    ray.init(num_cpus=c.num_cpus or max(int(needed + 0.999), os.cpu_count() or 1), num_gpus=c.num_gpus,
             include_dashboard=c.ray_dashboard, runtime_env={"env_vars": env}, **kwargs)  # fmt: skip


def place(cfg: Config, gpus: float) -> dict:
    """Placement groups for the learner ranks and rollout engines: `colocated` shares bundles (and, on GPUs,
    each device: half a GPU per role, the engine sleeping while the learner trains) or `split` (one group per
    role)."""
    from grpo_lambda.distributed.placement import RoleSpec, place_roles

    colocate = cfg.cluster.placement == "colocated"
    share = 0.5 if colocate else 1.0
    roles = [
        RoleSpec("learner", cfg.learner.world_size, cfg.learner.num_cpus_per_rank, gpus * share),
        RoleSpec("rollout", cfg.rollout.num_workers, 1.0, gpus * share * cfg.rollout.tensor_parallel_size),
    ]
    return place_roles(roles, colocate=colocate)


def resolve_weight_sync(cfg: Config, gpus: float) -> tuple[str, str | None]:
    """(rollout.weight_sync, the broadcast group's backend or None) with `auto` resolved.

    auto: broadcast. Its group uses NCCL between GPUs in split placement; gloo on CPUs and for colocated GPUs,
    where learner rank 0 and an engine share a device, which NCCL cannot put in two ranks of a group (the
    buckets then travel through host memory, still one bucket at a time)."""
    r = cfg.rollout
    colocated_gpus = gpus > 0 and cfg.cluster.placement == "colocated"
    mode = "broadcast" if r.weight_sync == "auto" else r.weight_sync
    if mode != "broadcast":
        return mode, None
    backend = r.sync_backend
    if backend == "auto":
        backend = "nccl" if gpus > 0 and not colocated_gpus else "gloo"
    if backend == "nccl" and gpus == 0:
        raise ValueError("rollout.sync_backend=nccl needs GPUs; this cluster has none: use auto or gloo")
    if backend == "nccl" and colocated_gpus:
        raise ValueError(
            "rollout.sync_backend=nccl: on GPUs in colocated placement learner rank 0 and an engine share a "
            "device, which NCCL cannot broadcast between; use rollout.sync_backend=gloo (or auto) or "
            "cluster.placement=split"
        )
    return mode, backend


def build_rollout_workers(cfg: Config, model_path: str, placement, gpus: float) -> list:
    import ray

    r = cfg.rollout
    env = dict(cfg.cluster.env_vars)
    if gpus == 0 and not cfg.cluster.address:
        # Rollout and learning take turns on a local CPU machine: the engine may use every core while it runs
        # (Ray would otherwise pin it to OMP_NUM_THREADS=1, its 1-CPU reservation).
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    actor_cls = make_rollout_worker_cls(num_cpus=1, num_gpus=gpus, extra_env=env)
    dtype = cfg.model.dtype if r.dtype == "auto" else r.dtype
    workers = [
        actor_cls.options(**placement.actor_options(i)).remote(
            model_path,
            dtype=dtype,
            seed=cfg.trainer.seed + i,
            max_model_len=cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
            kv_cache_gib=r.kv_cache_gib if gpus == 0 else None,
            gpu_memory_utilization=r.gpu_memory_utilization,
            enforce_eager=r.enforce_eager,
            tensor_parallel_size=r.tensor_parallel_size,
            enable_sleep_mode=cfg.cluster.placement == "colocated" and gpus > 0,
        )  # fmt: skip
        for i in range(r.num_workers)
    ]
    ray.get([w.ready.remote() for w in workers])
    return workers


def get_fail_fast(refs: list, timeout_s: float) -> list:
    """ray.get of all `refs`, raising the first error as soon as it happens (not after the others finish) and
    ray's GetTimeoutError when they are not all done within `timeout_s`."""
    import ray

    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise ray.exceptions.GetTimeoutError(
                f"{len(pending)} of {len(refs)} calls unfinished after {timeout_s} s"
            )
        ray.get(ready)  # raises this call's error now
    return ray.get(refs)


def init_broadcast_sync(cfg: Config, learner, workers: list, backend: str) -> None:
    """One sync group: learner rank 0 is rank 0, engine i's tensor-parallel worker j is 1 + i·tp + j."""
    import ray

    r = cfg.rollout
    rank0 = learner.group.actors[0]
    nodes = {ray.get(rank0.node_id.remote()), *ray.get([w.node_id.remote() for w in workers])}
    host, port = ray.get(rank0.master_address.remote(len(nodes) == 1))
    world = 1 + len(workers) * r.tensor_parallel_size
    dtype = cfg.model.dtype if r.dtype == "auto" else r.dtype
    refs = [
        learner.init_weight_sync_async(
            host,
            port,
            world,
            backend=backend,
            timeout_s=r.sync_timeout_s,
            dtype=dtype,
            bucket_bytes=int(r.sync_bucket_mb * 2**20),
        )
    ]
    refs += [w.init_weight_sync.remote(host, port, world, 1 + i * r.tensor_parallel_size, backend=backend,
                                       timeout_s=r.sync_timeout_s) for i, w in enumerate(workers)]  # fmt: skip
    ray.get(refs, timeout=r.sync_timeout_s + 30)
