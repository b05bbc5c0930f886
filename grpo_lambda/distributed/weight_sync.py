"""Weight sync: after every update the learner's weights reach every rollout engine, versioned and checked.

    sync = WeightSync(cfg, learner, rollout, gpus)    # sets up the sync group (broadcast mode)
    sync.push()                                       # once per step: version + 1, send, receive, compare, check

This object owns the whole exchange: the sync group's set-up (addresses and ranks), the version counter, sending
(learner rank 0) and receiving (every engine worker) at the same time, the comparison of what each engine received
with what was sent, and the optional read-back check (`rollout.sync_check`). The learner's side of the wire lives in
`LearnerWorker` (it owns the DeepSpeed engine the weights come from), the engines' side in `rollout/vllm_engine.py`
(it owns vLLM's loader); both call `sync_protocol.py`.

`rollout.weight_sync`:
- `broadcast` (default): one process group holds learner rank 0 (rank 0) and every engine worker (engine i,
  tensor-parallel rank j: 1 + i·tp + j); rank 0 streams buckets of `rollout.sync_bucket_mb`, cast to the engines'
  dtype, which vLLM loads in place as they arrive (sync_protocol.py). 1.47x faster than `object_store` on the CPU
  benchmark (scripts/bench_weight_sync.py).
- `object_store`: rank 0's full state dict through Ray's object store, one `load_weights` per engine. It earns its
  place as the path that needs nothing but Ray: no port on learner rank 0 that the engines' nodes must reach and no
  extra process group (clusters whose firewalls open only Ray's own ports), and it is the plainest path to compare
  against when a broadcast sync is in doubt.

The first failure on either side is raised at once (`get_fail_fast`), not after the other side's timeout, and a
sync that takes longer than `rollout.sync_timeout_s` raises TimeoutError instead of hanging.
"""

from __future__ import annotations

from grpo_lambda.config.schema import Config

from .actor_group import get_fail_fast


def resolve_sync_backend(cfg: Config, gpus: float) -> str:
    """The broadcast group's backend, `rollout.sync_backend` with auto resolved: NCCL between GPUs in split
    placement; gloo on CPUs and for colocated GPUs, where learner rank 0 and an engine share a device, which NCCL
    cannot put in two ranks of one group (the buckets then travel through host memory, still one at a time)."""
    backend = cfg.rollout.sync_backend
    colocated_gpus = gpus > 0 and cfg.cluster.placement == "colocated"
    if backend == "auto":
        return "nccl" if gpus > 0 and not colocated_gpus else "gloo"
    if backend == "nccl" and gpus == 0:
        raise ValueError("rollout.sync_backend=nccl needs GPUs; this cluster has none: use auto or gloo")
    if backend == "nccl" and colocated_gpus:
        raise ValueError(
            "rollout.sync_backend=nccl: on GPUs in colocated placement learner rank 0 and an engine share a "
            "device, which NCCL cannot broadcast between; use rollout.sync_backend=gloo (or auto) or "
            "cluster.placement=split"
        )
    return backend


class WeightSync:
    """Learner → engines, once per step (see the module docstring). `version` counts syncs: the engines hold the
    weights of update `version`, and a restored run sets it from its checkpoint before the first push."""

    def __init__(self, cfg: Config, learner, rollout, gpus: float):
        """learner: a LearnerGroup; rollout: a RolloutGroup (its `engines` are Ray actor handles)."""
        self.cfg, self.learner, self.rollout = cfg.rollout, learner, rollout
        self.mode = self.cfg.weight_sync
        self.backend = resolve_sync_backend(cfg, gpus) if self.mode == "broadcast" else None
        self.dtype = self.cfg.engine_dtype(cfg.model.dtype)
        self.version = 0
        if self.mode == "broadcast":
            self._init_group()
        rollout.on_replace = self.rejoin  # a replaced engine joins the group and takes the current weights

    @property
    def engines(self) -> list:
        return self.rollout.engines  # the current actors (a replaced engine is a new one)

    def _init_group(self) -> None:
        """Learner rank 0 is rank 0; engine i's tensor-parallel worker j is 1 + i·tp + j. All join at once."""
        import ray

        r = self.cfg
        nodes = {*self.learner.node_ids()[:1], *ray.get([e.node_id.remote() for e in self.engines])}
        host, port = self.learner.rank0_address(single_node=len(nodes) == 1)
        world, tp = 1 + len(self.engines) * r.tensor_parallel_size, r.tensor_parallel_size
        refs = [self.learner.init_weight_sync_async(host, port, world, backend=self.backend, timeout_s=r.sync_timeout_s,
                                                    dtype=self.dtype, bucket_bytes=int(r.sync_bucket_mb * 2**20))]  # fmt: skip
        refs += [e.init_weight_sync.remote(host, port, world, 1 + i * tp, backend=self.backend, timeout_s=r.sync_timeout_s)
                 for i, e in enumerate(self.engines)]  # fmt: skip
        ray.get(refs, timeout=r.sync_timeout_s + 30)

    def push(self) -> dict[str, int]:
        """Give every engine the learner's current weights as version `self.version + 1`; returns what moved
        (tensors, bytes, buckets; empty for object_store). Raises if an engine received something else than was
        sent, if the read-back check finds a difference, or after rollout.sync_timeout_s."""
        import ray

        self.version += 1
        try:
            stats = self._send()
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, RuntimeError) as err:
            lost = self.learner.failure_in(err, "the weight sync")
            if lost:  # a learner rank died: nothing to mend here (LearnerFailure stops the run)
                raise lost from err
            dead = self._engines_lost_in_sync()
            if not dead:  # the learner's side failed, or something else than an engine: not ours to mend
                if isinstance(err, ray.exceptions.GetTimeoutError):
                    raise TimeoutError(
                        "weight sync to the rollout engines took longer than "
                        f"rollout.sync_timeout_s={self.cfg.sync_timeout_s}"
                    ) from None
                raise
            self.rollout.replace(dead, f"died during the weight sync ({type(err).__name__})")  # → rejoin
            stats = {}
        return stats

    def _send(self, resend: bool = False) -> dict[str, int]:
        timeout = self.cfg.sync_timeout_s
        if self.mode == "broadcast":
            stats = self._broadcast(timeout, resend)
        else:
            stats = self._object_store(timeout, resend)
        if self.cfg.sync_check:
            self.check(timeout)
        return stats

    def _engines_lost_in_sync(self) -> list[int]:
        """After a failed push: the engines that died. Learner rank 0 first leaves the broadcast group, so the
        engines still waiting for buckets fail now rather than at the group's timeout and can join a new one."""
        if self.mode == "broadcast":
            try:
                self.learner.close_weight_sync()
            except Exception:  # noqa: BLE001 - a dead learner shows in the error being handled
                return []
        return self.rollout.dead_engines()

    def rejoin(self, indices: list[int], push: bool = True) -> None:
        """Engines `indices` were replaced (RolloutGroup.replace): rebuild the broadcast group (every member
        joins a new one: a process group cannot take a new member), then, with `push`, send the learner's
        weights again as the current version to every engine (`resend`: the others already hold it) and
        require every engine to report that version. Without `push` the caller's next push brings them up."""
        import ray

        if self.mode == "broadcast":
            self.learner.close_weight_sync()
            self._init_group()
        if push and self.version > 0:  # version 0: the base weights, which a new engine loads itself
            self._send(resend=True)
        if push:
            versions = ray.get(
                [e.weights_version.remote() for e in self.engines], timeout=self.cfg.sync_timeout_s
            )
            if any(v != self.version for v in versions):
                raise RuntimeError(f"after replacing engines {indices}: engine versions {versions}, expected "
                                   f"{self.version} everywhere")  # fmt: skip

    def _broadcast(self, timeout: float, resend: bool = False) -> dict[str, int]:
        sending = self.learner.broadcast_weights_async(self.version)
        receiving = [e.receive_weights.remote(self.version, resend) for e in self.engines]
        results = get_fail_fast(sending + receiving, timeout)  # a failed side must not wait out the other
        sent, received = results[0], results[len(sending) :]
        for i, got in enumerate(received):
            if got != sent:
                raise RuntimeError(f"weight sync: engine {i} received {got}, the learner sent {sent}")
        return sent

    def _object_store(self, timeout: float, resend: bool = False) -> dict[str, int]:
        import ray

        weights = self.learner.state_dict_ref()
        ray.get([e.load_weights.remote(weights, self.version, resend) for e in self.engines], timeout=timeout)
        return {}

    def check(self, timeout: float | None = None) -> None:
        """Read every engine's effective weights back and require them equal to the learner's (in the engine's
        dtype); raises naming the tensors that differ."""
        import ray

        weights = self.learner.state_dict_ref()
        bad = ray.get([e.verify_weights.remote(weights) for e in self.engines], timeout=timeout)
        if any(bad):
            raise RuntimeError(f"weight sync check failed: engines differ from the learner in {bad}")
