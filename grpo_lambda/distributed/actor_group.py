"""A group of Ray actors of one class, placed on a role's bundles, called all at once.

group = ActorGroup(MyActor, placement)                  # actor i on bundle placement.bundle_indices[i]
group = ActorGroup(MyActor, placement, per_actor_args=[(0,), (1,)])   # per-actor constructor arguments
group.call("method", x)                                 # same arguments for every actor -> list of results
group.call_each("method", [(a0,), (a1,)])               # per-actor arguments
group.call_each("method", [(), ()], per_actor_kwargs=[{"k": 0}, {"k": 1}])
refs = group.call_async("method", x)                    # ObjectRefs, nothing waited for
results = await group.acall("method", x)                # from asyncio code
results = get_fail_fast(refs, timeout_s=60)             # the first error at once, not after the others
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from .placement import RolePlacement


class ActorGroup:
    """N actors of `actor_cls` (a plain class or a `ray.remote` class), one per bundle of `placement`."""

    def __init__(
        self,
        actor_cls: Any,
        placement: RolePlacement,
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        per_actor_args: Sequence[Sequence[Any]] | None = None,
        runtime_env: dict | None = None,
    ):
        import ray

        remote_cls = actor_cls if hasattr(actor_cls, "remote") else ray.remote(actor_cls)
        if per_actor_args is not None and len(per_actor_args) != placement.num_actors:
            raise ValueError(f"{len(per_actor_args)} per_actor_args for {placement.num_actors} actors")
        self.placement = placement
        self.actors = []
        for i in range(placement.num_actors):
            options = placement.actor_options(i)
            if runtime_env:
                options["runtime_env"] = runtime_env
            actor_args = tuple(args) + (tuple(per_actor_args[i]) if per_actor_args is not None else ())
            self.actors.append(remote_cls.options(**options).remote(*actor_args, **(kwargs or {})))

    def __len__(self) -> int:
        return len(self.actors)

    def call_async(self, method: str, *args, **kwargs) -> list:
        """Start `method(*args, **kwargs)` on every actor; returns their ObjectRefs in rank order."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call_each_async(
        self,
        method: str,
        per_actor_args: Sequence[Sequence[Any]],
        per_actor_kwargs: Sequence[dict[str, Any]] | None = None,
        **kwargs,
    ) -> list:
        """Start `method(*per_actor_args[i], **per_actor_kwargs[i], **kwargs)` on actor i; ObjectRefs in rank order."""
        per_actor_kwargs = per_actor_kwargs if per_actor_kwargs is not None else [{}] * len(self.actors)
        if len(per_actor_args) != len(self.actors) or len(per_actor_kwargs) != len(self.actors):
            raise ValueError(
                f"{method}: got {len(per_actor_args)} argument tuples / {len(per_actor_kwargs)} keyword dicts "
                f"for {len(self.actors)} actors"
            )
        return [
            getattr(actor, method).remote(*args, **kw, **kwargs)
            for actor, args, kw in zip(self.actors, per_actor_args, per_actor_kwargs)
        ]

    def call(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> list:
        """Call `method` on every actor and wait for all results (rank order). An actor's error is re-raised."""
        import ray

        return ray.get(self.call_async(method, *args, **kwargs), timeout=timeout_s)

    def call_each(
        self,
        method: str,
        per_actor_args: Sequence[Sequence[Any]],
        per_actor_kwargs: Sequence[dict[str, Any]] | None = None,
        *,
        timeout_s: float | None = None,
        **kwargs,
    ) -> list:
        import ray

        return ray.get(
            self.call_each_async(method, per_actor_args, per_actor_kwargs, **kwargs), timeout=timeout_s
        )

    async def acall(self, method: str, *args, **kwargs) -> list:
        """`call` for asyncio code: awaits every actor's result."""
        return list(await asyncio.gather(*self.call_async(method, *args, **kwargs)))

    def kill(self) -> None:
        """Kill every actor (no graceful exit); the placement group is left to its owner."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


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
