"""Ray placement groups per role, groups of actors, the torch.distributed rendezvous between them, and the weight
sync from the learner to the rollout engines (weight_sync.py: the driver's object; sync_protocol.py: the wire)."""

from .actor_group import ActorGroup, get_fail_fast
from .placement import RolePlacement, RoleSpec, create_placement_group, place_roles
from .rendezvous import Rendezvous, default_backend, find_free_port, local_ranks, master_address

__all__ = [
    "ActorGroup",
    "Rendezvous",
    "RolePlacement",
    "RoleSpec",
    "create_placement_group",
    "default_backend",
    "find_free_port",
    "get_fail_fast",
    "local_ranks",
    "master_address",
    "place_roles",
]
