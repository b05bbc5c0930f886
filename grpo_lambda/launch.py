"""Where a run's actors go: Ray (a local cluster or a joined one) and the placement groups of the roles.

Plain functions of the run's `Config`; `Trainer.__init__` (and `evaluate`) call them, then build the roles on the
placements (RolloutGroup, LearnerGroup) and the WeightSync between them. docs/launch.md: local, Ray jobs, SLURM.
"""

from __future__ import annotations

import contextlib
import os
import time

from grpo_lambda.compat import ray_bind_localhost, use_ray_token_if_available
from grpo_lambda.config.schema import Config

VERIFIER_CPUS = 0.5  # Ray CPUs reserved per verifier actor (its checks run in subprocesses)


DASHBOARD_HOST = "127.0.0.1"  # the dashboard (cluster.ray_dashboard=true): reachable from this machine only


def engine_positions(cfg: Config) -> int:
    """The engines' max_model_len: the prompt plus the longer of the training responses and, when the run evaluates,
    the evaluation responses (eval.max_response_tokens, e.g. the paper presets' 3072 beside 256 in training)."""
    t, responses = cfg.trainer, cfg.model.max_response_tokens
    if t.eval_every_steps > 0 or t.eval_before_train:
        responses = max(responses, cfg.eval.max_response_tokens or responses)
    return cfg.model.max_prompt_tokens + responses


def init_ray(cfg: Config) -> float:
    """Join `cluster.address` (waiting for `cluster.num_nodes` nodes) or start a local Ray sized for this run's
    actors (logical CPUs may exceed cores). Returns the GPUs per actor this run uses: 1.0 when the cluster has GPUs,
    else 0.0.

    `cluster.address: null` always starts a new local Ray (`address="local"`): neither RAY_ADDRESS nor the record
    `ray start` leaves in /tmp/ray (kept after that cluster stops or dies) makes a local run join another cluster.
    A local Ray listens on 127.0.0.1 only with `cluster.bind_localhost` (the default; else on every interface) and
    starts no dashboard unless `cluster.ray_dashboard` (then on 127.0.0.1). A joined cluster keeps the addresses
    it was started with (`ray start`). See docs/security.md."""
    import ray

    if not ray.is_initialized():
        c = cfg.cluster
        env = {"TOKENIZERS_PARALLELISM": "false", **c.env_vars}
        if c.address:
            use_ray_token_if_available()
            ray.init(address=c.address, runtime_env={"env_vars": env})
            if c.num_nodes:
                wait_for_nodes(c.num_nodes, c.join_timeout_s)
        else:
            needed = (cfg.rollout.num_workers + cfg.learner.world_size * cfg.learner.num_cpus_per_rank
                      + cfg.reward.num_workers * VERIFIER_CPUS + 1)  # fmt: skip
            with ray_bind_localhost() if c.bind_localhost else contextlib.nullcontext({}) as kwargs:
                ray.init(address="local", num_cpus=c.num_cpus or max(int(needed + 0.999), os.cpu_count() or 1),
                         num_gpus=c.num_gpus, include_dashboard=c.ray_dashboard, dashboard_host=DASHBOARD_HOST,
                         runtime_env={"env_vars": env}, **kwargs)  # fmt: skip
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def wait_for_nodes(num_nodes: int, timeout_s: float, poll_s: float = 1.0) -> list[dict]:
    """Wait until the joined cluster has `num_nodes` alive nodes (the workers of a SLURM job join after its head);
    returns them. TimeoutError names the nodes that did join."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= num_nodes:
            return alive
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"cluster.num_nodes={num_nodes} but after {timeout_s:.0f} s (cluster.join_timeout_s) only "
                f"{len(alive)} node(s) have joined: {[n['NodeManagerAddress'] for n in alive]}. Check the workers' "
                "`ray start --address` logs (a wrong head address, a blocked port, a missing auth token)."
            )
        time.sleep(poll_s)


def start_verifier(cfg: Config):
    """The reward-verifier pool: `reward.num_workers` Ray actors, pinned by `cluster.role_resources.reward`."""
    from grpo_lambda.distributed.placement import check_placeable
    from grpo_lambda.rewards import VerifierPool

    resources = dict(cfg.cluster.role_resources.get("reward") or {})
    check_placeable([{"CPU": VERIFIER_CPUS, **resources}] * cfg.reward.num_workers, "the verifier pool")
    return VerifierPool(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s, use_ray=True,
                        num_cpus_per_worker=VERIFIER_CPUS, resources=resources)  # fmt: skip


def place(cfg: Config, gpus: float, roles: tuple[str, ...] = ("learner", "rollout")) -> dict:
    """Placement groups for the learner ranks and rollout engines: `colocated` shares bundles (and, on GPUs,
    each device: half a GPU per role, the engine sleeping while the learner trains) or `split` (one group per
    role). `roles=("rollout",)` places the engines alone (evaluation). Returns role name -> RolePlacement."""
    from grpo_lambda.distributed.placement import RoleSpec, place_roles

    colocate = cfg.cluster.placement == "colocated" and len(roles) > 1
    share = 0.5 if colocate else 1.0
    pin = {role: dict(cfg.cluster.role_resources.get(role) or {}) for role in ("learner", "rollout")}
    specs = {
        "learner": RoleSpec(
            "learner", cfg.learner.world_size, cfg.learner.num_cpus_per_rank, gpus * share, pin["learner"]
        ),
        "rollout": RoleSpec(
            "rollout",
            cfg.rollout.num_workers,
            1.0,
            gpus * share * cfg.rollout.tensor_parallel_size,
            pin["rollout"],
        ),
    }
    return place_roles(
        [specs[name] for name in roles], colocate=colocate, timeout_s=cfg.cluster.placement_timeout_s
    )


def release(placements: dict) -> None:
    """Remove the placement groups `place` made (each once: colocated roles share one)."""
    from ray.util.placement_group import remove_placement_group

    for pg in {id(p.placement_group): p.placement_group for p in placements.values()}.values():
        remove_placement_group(pg)
