"""Ray placement groups per role, groups of actors, and the torch.distributed rendezvous between them."""

from .actor_group import ActorGroup
from .placement import (
    RolePlacement,
    RoleSpec,
    create_placement_group,
    place_roles,
    placement_group_strategies,
)
from .rendezvous import Rendezvous, default_backend, find_free_port, local_ranks, master_address

__all__ = [
    "ActorGroup",
    "Rendezvous",
    "RolePlacement",
    "RoleSpec",
    "create_placement_group",
    "default_backend",
    "find_free_port",
    "local_ranks",
    "master_address",
    "place_roles",
    "placement_group_strategies",
]
