"""Ray placement groups per role: split (one group per role) or colocated (roles share bundles and devices).

A role (learner, rollout, reference ...) is `RoleSpec(name, num_actors, cpus_per_actor, gpus_per_actor, resources)`;
`resources` are custom Ray resources (`ray start --resources`) that pin the role's actors to the nodes declaring them.

- split: each role gets its own placement group of `num_actors` bundles {CPU: c, GPU: g}.
- colocated: one placement group; bundle i holds actor i of every role that has more than i actors, and is sized
  for their sum. Roles sharing a GPU therefore ask for fractions (e.g. 0.5 + 0.5); the rollout engine sleeps while
  the learner trains.

`RolePlacement.actor_options(i)` gives the `.options(...)` that pin actor i of a role to its bundle. A request no
node or the whole cluster could ever hold fails at once (`PlacementError`), one that waits for others to free
resources fails after `timeout_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class RoleSpec:
    """How many actors a role has and what each one needs."""

    name: str
    num_actors: int
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor

    def __post_init__(self):
        if self.num_actors < 1:
            raise ValueError(f"role {self.name!r}: num_actors must be >= 1, got {self.num_actors}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0 or any(v <= 0 for v in self.resources.values()):
            raise ValueError(
                f"role {self.name!r}: cpus_per_actor / gpus_per_actor must be >= 0, resources > 0"
            )

    def bundle(self) -> dict[str, float]:
        """What one actor of the role holds."""
        return _bundle(self.cpus_per_actor, self.gpus_per_actor, self.resources)


@dataclass
class RolePlacement:
    """Where the actors of one role go: bundle `bundle_indices[i]` of `placement_group` for actor i."""

    role: RoleSpec
    placement_group: Any  # ray.util.placement_group.PlacementGroup
    bundle_indices: list[int] = field(default_factory=list)

    @property
    def num_actors(self) -> int:
        return len(self.bundle_indices)

    def scheduling_strategy(self, i: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(
            placement_group=self.placement_group,
            placement_group_bundle_index=self.bundle_indices[i],
            placement_group_capture_child_tasks=True,
        )

    def scheduling_strategies(self) -> list:
        return [self.scheduling_strategy(i) for i in range(self.num_actors)]

    def actor_options(self, i: int) -> dict:
        """Keyword arguments for `ActorClass.options(...)` pinning actor i to its bundle."""
        options = {
            "num_cpus": self.role.cpus_per_actor,
            "num_gpus": self.role.gpus_per_actor,
            "scheduling_strategy": self.scheduling_strategy(i),
        }
        if self.role.resources:
            options["resources"] = dict(self.role.resources)
        return options


class PlacementError(RuntimeError):
    """A request the Ray cluster cannot hold: the message names what was asked for and what the cluster has."""


def _bundle(cpus: float, gpus: float, resources: dict[str, float] | None = None) -> dict[str, float]:
    bundle = {"CPU": float(cpus)}
    if gpus > 0:
        bundle["GPU"] = float(gpus)
    for name, amount in (resources or {}).items():
        bundle[name] = bundle.get(name, 0.0) + float(amount)
    return bundle


def _sum(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Resource amounts added up by name."""
    total: dict[str, float] = {}
    for d in dicts:
        for name, amount in d.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def _fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(amount <= have.get(name, 0.0) + 1e-9 for name, amount in need.items() if amount > 0)


def unplaceable(bundles: Sequence[dict[str, float]], nodes: Sequence[dict[str, float]]) -> str | None:
    """Why `bundles` can never be placed on nodes with these total resources (each bundle must fit one node, all
    of them the cluster's sum), or None when they might. Pure: the caller reads the nodes from Ray."""
    for bundle in bundles:
        if not any(_fits(bundle, node) for node in nodes):
            return f"no node has {bundle}"
    total, need = _sum(nodes), _sum(bundles)
    short = {name: amount for name, amount in need.items() if amount > total.get(name, 0.0) + 1e-9}
    return (
        f"they need {short} in all, the cluster has { ({n: total.get(n, 0.0) for n in short}) }"
        if short
        else None
    )


def describe_nodes() -> list[dict[str, float]]:
    """Each alive Ray node's total resources, without Ray's per-node `node:<ip>` markers."""
    import ray

    return [
        {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}
        for n in ray.nodes()
        if n["Alive"]
    ]


def check_placeable(bundles: Sequence[dict[str, float]], what: str) -> None:
    """Raise PlacementError at once when the cluster's nodes could never hold `bundles` (see `unplaceable`)."""
    nodes = describe_nodes()
    why = unplaceable(bundles, nodes)
    if why:
        raise PlacementError(
            f"{what} asks for bundles {list(bundles)}, which this Ray cluster can never hold: {why}. Its nodes "
            f"have {nodes}. Ask for fewer actors/CPUs/GPUs per role (rollout.num_workers, learner.world_size, "
            "learner.num_cpus_per_rank, reward.num_workers), fix cluster.role_resources, or add nodes."
        )


def create_placement_group(
    bundles: int | Sequence[dict[str, float]],
    *,
    cpus_per_bundle: float = 1.0,
    gpus_per_bundle: float = 0.0,
    strategy: str = "PACK",
    name: str = "",
    timeout_s: float = 120.0,
):
    """Create a placement group and wait until it is placed.

    bundles: a count N (N bundles of {CPU: cpus_per_bundle, GPU: gpus_per_bundle}) or explicit bundle dicts.
    Raises TimeoutError naming the request and the cluster's resources when it cannot be placed in `timeout_s`.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if strategy not in STRATEGIES:
        raise ValueError(f"placement strategy {strategy!r} is not one of {STRATEGIES}")
    if isinstance(bundles, int):
        if bundles < 1:
            raise ValueError(f"a placement group needs at least one bundle, got {bundles}")
        bundles = [_bundle(cpus_per_bundle, gpus_per_bundle) for _ in range(bundles)]
    bundles = [dict(b) for b in bundles]
    check_placeable(bundles, f"placement group {name or '(unnamed)'}")
    pg = placement_group(bundles, strategy=strategy, name=name)
    if not pg.wait(timeout_seconds=timeout_s):
        remove_placement_group(pg)
        raise TimeoutError(
            f"placement group {name or '(unnamed)'} with bundles {bundles} ({strategy}) was not placed within "
            f"{timeout_s:.0f} s: the cluster could hold it, but other work holds part of it (free now: "
            f"{ray.available_resources()}; nodes: {describe_nodes()}). Wait for it to finish, raise "
            "cluster.placement_timeout_s, ask for fewer actors/CPUs/GPUs per role, or add nodes."
        )
    return pg


def place_roles(
    roles: Sequence[RoleSpec], *, colocate: bool, strategy: str = "PACK", timeout_s: float = 120.0
) -> dict[str, RolePlacement]:
    """Reserve resources for every role; returns role name -> RolePlacement."""
    names = [r.name for r in roles]
    if len(set(names)) != len(names):
        raise ValueError(f"role names must be unique, got {names}")
    if not colocate:
        return {
            r.name: RolePlacement(
                r,
                create_placement_group(
                    [r.bundle() for _ in range(r.num_actors)],
                    strategy=strategy,
                    name=f"grpo_lambda_{r.name}",
                    timeout_s=timeout_s,
                ),
                list(range(r.num_actors)),
            )
            for r in roles
        }
    bundles = colocated_bundles(roles)
    pg = create_placement_group(bundles, strategy=strategy, name="grpo_lambda_colocated", timeout_s=timeout_s)
    return {r.name: RolePlacement(r, pg, list(range(r.num_actors))) for r in roles}


def colocated_bundles(roles: Sequence[RoleSpec]) -> list[dict[str, float]]:
    """Bundle i is sized for actor i of every role with more than i actors; a shared GPU must not exceed 1."""
    bundles = []
    for i in range(max(r.num_actors for r in roles)):
        here = [r for r in roles if r.num_actors > i]
        gpus = sum(r.gpus_per_actor for r in here)
        if gpus > 1.0 + 1e-9:
            raise ValueError(
                f"colocated roles {[r.name for r in here]} ask for {gpus:g} GPUs in one bundle; colocated actors "
                "share one GPU, so their gpus_per_actor must sum to at most 1 (e.g. 0.5 each)"
            )
        bundles.append(_sum([r.bundle() for r in here]))
    return bundles
