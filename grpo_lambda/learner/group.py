"""LearnerGroup: N DeepSpeed ZeRO learner ranks as Ray actors, driven from the trainer.

    group = LearnerGroup(cfg, model_path)                    # cfg: the run's Config (learner, model, algorithm ...)
    if group.needs_old_logp(len(batch)):
        batch = batch.replace(old_logp=group.compute_logp(batch))               # θ_old
    if cfg.algorithm.kl_coef > 0:
        batch = batch.replace(ref_logp=group.compute_logp(batch, reference=True))
    metrics = group.train_step(batch)                        # one optimiser step per mini-batch

Weights leave through `distributed.weight_sync.WeightSync`, which calls `init_weight_sync_async`,
`broadcast_weights_async` and `state_dict_ref` here.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from grpo_lambda.config.schema import Config
from grpo_lambda.distributed.actor_group import ActorGroup
from grpo_lambda.distributed.placement import RolePlacement, RoleSpec, place_roles
from grpo_lambda.distributed.rendezvous import Rendezvous, local_ranks

from .batch import LearnerBatch, mini_batch_counts, pad_rows, shard_for_data_parallel, split_batch
from .metrics import reduce_rank_metrics
from .token_budget import plan_micro_batches
from .worker import LearnerActor

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def learner_runtime_env(extra_env: dict[str, str] | None = None) -> dict:
    """Ray runtime_env for learner actors: tcmalloc preloaded when installed (CPU training ~1.8x faster here)."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if os.path.exists(TCMALLOC):
        env["LD_PRELOAD"] = TCMALLOC
    env.update(extra_env or {})
    return {"env_vars": env}


class LearnerGroup:
    """`cfg.learner.world_size` learner ranks (LearnerActor) on a placement group, created here (one GPU per rank
    when the Ray cluster has GPUs) unless the trainer passes its `placement`."""

    def __init__(self, cfg: Config, model_path: str, *, placement: RolePlacement | None = None):
        import ray

        self.cfg = cfg
        self.world_size = world_size = cfg.learner.world_size
        self._own_placement = placement is None
        if placement is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
            role = RoleSpec(
                "learner", world_size, cpus_per_actor=cfg.learner.num_cpus_per_rank, gpus_per_actor=gpus
            )
            placement = place_roles([role], colocate=False)["learner"]
        if placement.num_actors != world_size:
            raise ValueError(
                f"the placement has {placement.num_actors} bundles for learner world_size {world_size}"
            )
        self.placement = placement
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
        nodes = self.node_ids()
        local, local_sizes = local_ranks(nodes)
        addr, port = self.rank0_address(single_node=len(set(nodes)) == 1)
        rdzv = Rendezvous(addr, port, self.world_size)
        envs = [{"env": rdzv.env(r, local[r], local_sizes[r])} for r in range(self.world_size)]
        self.group.call_each("init", [(model_path, self.cfg)] * self.world_size, envs)

    def node_ids(self) -> list[str]:
        return self.group.call("node_id")

    def rank0_address(self, single_node: bool) -> tuple[str, int]:
        """(host, free port) on rank 0's node: loopback when every peer is on that node."""
        import ray

        return ray.get(self.group.actors[0].master_address.remote(single_node))

    # ------------------------------------------------------------------------------------------- the step
    def needs_old_logp(self, num_samples: int) -> bool:
        """θ_old needs its own forward only with more than one update per rollout batch (otherwise the first and
        only update runs at θ = θ_old, and old_logp = logp.detach())."""
        return num_samples > self.cfg.learner.mini_batch_samples or self.cfg.learner.epochs_per_batch > 1

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
        parts = self.group.call_each("compute_logp", [(s,) for s in shards], [{"plan": p} for p in plans],
                                     reference=reference)  # fmt: skip
        return torch.cat(parts)[: len(batch)]

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One optimiser step per mini-batch of `batch` (learner.mini_batch_samples), for learner.epochs_per_batch
        passes; returns metrics. old_logp (when `needs_old_logp`) and ref_logp (when kl_coef > 0) must be set.
        Each mini-batch's global token/sequence counts are taken here, before sharding over the ranks; with
        learner.micro_batch_tokens each rank's micro-batches are planned here too (same count on every rank)."""
        learner = self.cfg.learner
        mini, micro = learner.mini_batch_samples, learner.micro_batch_samples
        counts = mini_batch_counts(batch, mini)
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
        per_rank = self.group.call_each("train_step", [(shard,) for shard in shards], kwargs, mini_batch_samples=mini,
                                        micro_batch_samples=micro, counts=counts)  # fmt: skip
        return reduce_rank_metrics(per_rank)

    # ------------------------------------------------------------------------------------------- weights
    def state_dict_ref(self):
        """ObjectRef of rank 0's full HF-named state dict (CPU tensors), ready once returned."""
        import ray

        refs = self.group.call_async("gather_state_dict")
        ray.get(refs[1:])  # the other ranks took part in the (ZeRO-3) gathers; wait until they are done
        ray.wait(refs[:1])
        return refs[0]

    def init_weight_sync_async(self, host: str, port: int, world_size: int, **sender_kwargs):
        """ObjectRef: rank 0 joins the weight-sync group as its rank 0 (the engines must join concurrently)."""
        return self.group.actors[0].init_weight_sync.remote(host, port, world_size, **sender_kwargs)

    def broadcast_weights_async(self, version: int) -> list:
        """ObjectRefs, one per rank: rank 0 streams the weights to the engines (the engines must receive
        concurrently); rank 0's result says what it sent."""
        return self.group.call_async("broadcast_weights", version)

    def param_checksums(self) -> list[str]:
        """Per-rank sha256 of the full parameters (all equal unless the ranks diverged)."""
        return self.group.call("param_checksum")

    # ------------------------------------------------------------------------------------------- state
    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict | None = None) -> str:
        return self.group.call("save_checkpoint", ckpt_dir, tag, client_state)[0]

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> dict:
        """Restore every rank; returns rank 0's client_state."""
        return self.group.call("load_checkpoint", ckpt_dir, tag)[0]

    def shutdown(self) -> None:
        """Kill the actors and release the placement group if this group created it."""
        from ray.util.placement_group import remove_placement_group

        group = getattr(self, "group", None)
        if group is not None:
            group.kill()
        if self._own_placement and self.placement is not None:
            remove_placement_group(self.placement.placement_group)
            self.placement = None
