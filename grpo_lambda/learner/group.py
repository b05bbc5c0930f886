"""LearnerGroup: N DeepSpeed ZeRO learner ranks as Ray actors, driven from the trainer.

    group = LearnerGroup(cfg, model_path)                    # cfg: the run's Config (learner, model, algorithm ...)
    if group.needs_old_logp(len(batch)):
        batch = batch.replace(old_logp=group.compute_logp(batch))               # θ_old
    if cfg.algorithm.kl_coef > 0:
        batch = batch.replace(ref_logp=group.compute_logp(batch, reference=True))
    metrics = group.train_step(batch)                        # one optimiser step per mini-batch

Weights leave through `distributed.weight_sync.WeightSync`, which calls `init_weight_sync_async`,
`broadcast_weights_async` and `state_dict_ref` here.

Every call on the ranks fails fast (`_get`): a rank that dies leaves the others blocked in a collective (until the
process group's timeout) or failing in it; the driver does not wait for them but raises `LearnerFailure` naming the
dead rank at once (docs/faults.md). DeepSpeed's process group cannot take a new rank: the run stops and
`trainer.resume=auto` continues it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from grpo_lambda.algorithms.is_correction import sequence_keep
from grpo_lambda.algorithms.loss_config import SEQUENCE_IS
from grpo_lambda.compat import actor_id_hex
from grpo_lambda.config.schema import Config
from grpo_lambda.distributed.actor_group import ActorGroup
from grpo_lambda.distributed.placement import RolePlacement
from grpo_lambda.distributed.rendezvous import Rendezvous, local_ranks

from .batch import LearnerBatch, mini_batch_counts, pad_rows, shard_for_data_parallel, split_batch
from .metrics import reduce_rank_metrics
from .token_budget import plan_micro_batches
from .worker import LearnerActor

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
# After a rank's call fails with an ordinary error, how long to watch the other ranks for a death that explains it
# (a peer's death makes a gloo/NCCL collective fail on the survivors, possibly before Ray reports the death).
DEATH_GRACE_S = 10.0


class LearnerFailure(RuntimeError):
    """A learner rank's process died (killed, out of memory, crashed): the run cannot go on. `ranks`: the dead."""

    def __init__(self, message: str, ranks: Sequence[int] = ()):
        super().__init__(message)
        self.ranks = list(ranks)


def learner_runtime_env(extra_env: dict[str, str] | None = None) -> dict:
    """Ray runtime_env for learner actors: tcmalloc preloaded when installed (CPU training ~1.8x faster here)."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if os.path.exists(TCMALLOC):
        env["LD_PRELOAD"] = TCMALLOC
    env.update(extra_env or {})
    return {"env_vars": env}


class LearnerGroup:
    """`cfg.learner.world_size` learner ranks (LearnerActor) on a placement group: the trainer's `placement`, or one
    made here as the trainer makes it (`launch.place`: one GPU per rank when the Ray cluster has GPUs, pinned by
    `cluster.role_resources.learner`, waiting up to `cluster.placement_timeout_s`)."""

    def __init__(self, cfg: Config, model_path: str, *, placement: RolePlacement | None = None):
        import ray

        self.cfg = cfg
        self.world_size = world_size = cfg.learner.world_size
        self._own_placement = placement is None
        if placement is None:  # the trainer's placement for this role alone (cluster.role_resources included)
            from grpo_lambda.launch import place

            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
            placement = place(cfg, gpus, roles=("learner",))["learner"]
        if placement.num_actors != world_size:
            raise ValueError(
                f"the placement has {placement.num_actors} bundles for learner world_size {world_size}"
            )
        self.placement = placement
        # each rank's pid and node address, named when it dies (LearnerFailure)
        self.processes: list[dict] = [{} for _ in range(world_size)]
        self.group = ActorGroup(
            LearnerActor,
            placement,
            per_actor_args=[(rank, world_size) for rank in range(world_size)],
            runtime_env=learner_runtime_env(cfg.cluster.env_vars),
        )
        try:
            self._start(model_path)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, model_path: str) -> None:
        """Rank 0 picks MASTER_ADDR/PORT; every rank joins the process group and builds its engine."""
        self.processes = self._call("process_info")
        nodes = self.node_ids()
        local, local_sizes = local_ranks(nodes)
        addr, port = self.rank0_address(single_node=len(set(nodes)) == 1)
        rdzv = Rendezvous(addr, port, self.world_size)
        envs = [{"env": rdzv.env(r, local[r], local_sizes[r])} for r in range(self.world_size)]
        self._call_each("init", [(model_path, self.cfg)] * self.world_size, envs)

    def node_ids(self) -> list[str]:
        return self._call("node_id")

    def rank0_address(self, single_node: bool) -> tuple[str, int]:
        """(host, free port) on rank 0's node: loopback when every peer is on that node."""
        return self._get([self.group.actors[0].master_address.remote(single_node)], "master_address")[0]

    # ------------------------------------------------------------------------------------------- calls
    def _call(self, method: str, *args, **kwargs) -> list:
        """`method` on every rank (same arguments); results in rank order, failing fast (`_get`)."""
        return self._get(self.group.call_async(method, *args, **kwargs), method)

    def _call_each(self, method: str, per_rank_args, per_rank_kwargs=None, **kwargs) -> list:
        """`method` on every rank with its own arguments; results in rank order, failing fast (`_get`)."""
        refs = self.group.call_each_async(method, per_rank_args, per_rank_kwargs, **kwargs)
        return self._get(refs, method)

    def _get(self, refs: list, method: str, ranks: Sequence[int] | None = None) -> list:
        """The results of one call on the ranks (`ranks[i]` ran `refs[i]`; default 0..n-1). The first error is
        raised as soon as it arrives, not after the other ranks finish (they may never: a collective without its
        peer waits for the process group's timeout). A rank whose actor died raises LearnerFailure naming it; an
        ordinary error is re-raised as it is, unless a peer's death explains it (see DEATH_GRACE_S)."""
        import ray

        pending = dict(zip(refs, range(len(refs)) if ranks is None else ranks))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            rank = pending.pop(ready[0])
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                raise self._failure([rank], method) from err
            except Exception as err:
                dead = self._dead_within_grace(pending)
                if dead:
                    raise self._failure(dead, method) from err
                raise
        return ray.get(refs)

    @staticmethod
    def _dead_within_grace(pending: dict) -> list[int]:
        """The ranks of `pending` (ref -> rank) whose actor turns out dead within DEATH_GRACE_S."""
        import ray

        dead, deadline = [], time.monotonic() + DEATH_GRACE_S
        while pending and (left := deadline - time.monotonic()) > 0:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not ready:
                break
            rank = pending.pop(ready[0])
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError:
                dead.append(rank)
            except Exception:
                pass
        return sorted(dead)

    def failure_in(self, err: BaseException, method: str) -> LearnerFailure | None:
        """A LearnerFailure naming the rank when `err` is the death of one of the ranks, raised outside `_get` (the
        weight sync waits on both sides at once), else None."""
        import ray

        if isinstance(err, ray.exceptions.RayActorError) and err.actor_id:
            ids = [actor_id_hex(a) for a in self.group.actors]
            if err.actor_id in ids:
                return self._failure([ids.index(err.actor_id)], method)
        return None

    def _failure(self, ranks: list[int], method: str) -> LearnerFailure:
        def where(rank: int) -> str:
            info = self.processes[rank]
            return f"{rank} (pid {info.get('pid', '?')}, node {info.get('ip', '?')})"

        who = "learner rank " if len(ranks) == 1 else "learner ranks "
        return LearnerFailure(
            f"{who}{', '.join(where(r) for r in ranks)} died during {method}: the other ranks cannot go on "
            "without it (DeepSpeed's process group is fixed at start-up), so the run stops",
            ranks,
        )

    # ------------------------------------------------------------------------------------------- the step
    def needs_old_logp(self, num_samples: int) -> bool:
        """θ_old needs its own forward with more than one update per rollout batch (otherwise the first and only
        update runs at θ = θ_old, and old_logp = logp.detach()), and when algorithm.behaviour_is drops sequences
        (mis, seq_filter: which ones, and so the normalisers, depend on π_old before the update)."""
        return (num_samples > self.cfg.learner.mini_batch_samples or self.cfg.learner.epochs_per_batch > 1
                or self.cfg.algorithm.behaviour_is in SEQUENCE_IS)  # fmt: skip

    def compute_logp(self, batch: LearnerBatch, *, reference: bool = False) -> Tensor:
        """log-probs [B, T] (fp32, CPU) of batch's responses under the current policy (θ_old if called before
        train_step) or the reference model; rows are spread evenly over the ranks (and, with
        learner.micro_batch_tokens, grouped by length within each rank)."""
        padded, _ = pad_rows(batch, self.world_size)
        shards = split_batch(padded, len(padded) // self.world_size, what="rows per rank")
        budget = self.cfg.learner.micro_batch_tokens
        plans = (
            plan_micro_batches(shards, budget, self.cfg.learner.pack_groups)
            if budget
            else [None] * self.world_size
        )
        parts = self._call_each("compute_logp", [(s,) for s in shards], [{"plan": p} for p in plans],
                                reference=reference)  # fmt: skip
        return torch.cat(parts)[: len(batch)]

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One optimiser step per mini-batch of `batch` (learner.mini_batch_samples), for learner.epochs_per_batch
        passes; returns metrics. old_logp (when `needs_old_logp`) and ref_logp (when kl_coef > 0) must be set.
        Each mini-batch's global token/sequence counts are taken here, before sharding over the ranks; with
        learner.micro_batch_tokens each rank's micro-batches are planned here too (same count on every rank)."""
        learner = self.cfg.learner
        mini, micro = learner.mini_batch_samples, learner.micro_batch_samples
        a = self.cfg.algorithm
        keep = None
        # dropped sequences leave the normalisers (the loss drops them alike)
        if a.behaviour_is in SEQUENCE_IS:
            if batch.old_logp is None:
                raise ValueError(
                    f"algorithm.behaviour_is={a.behaviour_is} needs old_logp: compute_logp(batch) first"
                )
            keep = sequence_keep(batch.old_logp, batch.behaviour_logp, batch.response_mask, a.behaviour_is,
                                 a.behaviour_is_cap)  # fmt: skip
        counts = mini_batch_counts(batch, mini, keep)
        shards = shard_for_data_parallel(batch, self.world_size, mini)
        kwargs = [{} for _ in shards]
        if learner.micro_batch_tokens:  # each rank's shard holds its rows of every mini-batch, in order
            minis = [
                split_batch(s, mini // self.world_size, what="mini_batch_samples / world_size")
                for s in shards
            ]
            per_mini = [
                plan_micro_batches(rank_rows, learner.micro_batch_tokens, learner.pack_groups)
                for rank_rows in zip(*minis)
            ]
            kwargs = [{"micro_plans": [plans[r] for plans in per_mini]} for r in range(self.world_size)]
        per_rank = self._call_each("train_step", [(shard,) for shard in shards], kwargs, mini_batch_samples=mini,
                                   micro_batch_samples=micro, counts=counts)  # fmt: skip
        return reduce_rank_metrics(per_rank)

    # ------------------------------------------------------------------------------------------- weights
    def state_dict_ref(self):
        """ObjectRef of rank 0's full HF-named state dict (CPU tensors), ready once returned."""
        import ray

        refs = self.group.call_async("gather_state_dict")
        # the other ranks took part in the (ZeRO-3) gathers; wait until they are done
        self._get(refs[1:], "gather_state_dict", ranks=range(1, len(refs)))
        ray.wait(refs[:1])
        return refs[0]

    def init_weight_sync_async(self, host: str, port: int, world_size: int, **sender_kwargs):
        """ObjectRef: rank 0 joins the weight-sync group as its rank 0 (the engines must join concurrently)."""
        return self.group.actors[0].init_weight_sync.remote(host, port, world_size, **sender_kwargs)

    def close_weight_sync(self) -> None:
        """Rank 0 leaves the weight-sync group (before it is rebuilt for a replaced engine)."""
        import ray

        ray.get(self.group.actors[0].close_weight_sync.remote(), timeout=self.cfg.rollout.sync_timeout_s)

    def broadcast_weights_async(self, version: int) -> list:
        """ObjectRefs, one per rank: rank 0 streams the weights to the engines (the engines must receive
        concurrently); rank 0's result says what it sent."""
        return self.group.call_async("broadcast_weights", version)

    def param_checksums(self) -> list[str]:
        """Per-rank sha256 of the full parameters (all equal unless the ranks diverged)."""
        return self._call("param_checksum")

    def optimizer_checksums(self) -> list[str]:
        """Per-rank sha256 of the optimiser state and LR schedule (each rank's own ZeRO partition)."""
        return self._call("optimizer_checksum")

    # ------------------------------------------------------------------------------------------- state
    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict | None = None) -> str:
        return self._call("save_checkpoint", ckpt_dir, tag, client_state)[0]

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> dict:
        """Restore every rank; returns rank 0's client_state."""
        return self._call("load_checkpoint", ckpt_dir, tag)[0]

    def shutdown(self) -> None:
        """Kill the actors and release the placement group if this group created it."""
        from ray.util.placement_group import remove_placement_group

        group = getattr(self, "group", None)
        if group is not None:
            group.kill()
        if self._own_placement and self.placement is not None:
            remove_placement_group(self.placement.placement_group)
            self.placement = None
