"""Pure parts of grpo_lambda.distributed: rendezvous environment, local ranks, colocated bundle sizing."""

from __future__ import annotations

import socket

import pytest

from grpo_lambda.distributed.placement import RoleSpec, colocated_bundles, unplaceable
from grpo_lambda.distributed.rendezvous import Rendezvous, default_backend, find_free_port, local_ranks


def test_rendezvous_env():
    r = Rendezvous("127.0.0.1", 29555, world_size=4)
    env = r.env(rank=3, local_rank=1, local_world_size=2)
    assert env == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29555",
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }
    with pytest.raises(ValueError, match="rank 4 is outside world_size 4"):
        r.env(4)


def test_free_port_can_be_bound():
    port = find_free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_local_ranks_follow_nodes():
    assert local_ranks(["a", "a", "b", "a", "b"]) == ([0, 1, 0, 2, 1], [3, 3, 2, 3, 2])
    assert local_ranks(["x"]) == ([0], [1])


def test_backend_by_device():
    assert default_backend("cpu") == "gloo"
    assert default_backend("cuda") == "nccl"


def test_colocated_bundles_sum_roles():
    learner = RoleSpec("learner", 2, cpus_per_actor=2, gpus_per_actor=0.5)
    rollout = RoleSpec("rollout", 3, cpus_per_actor=1, gpus_per_actor=0.4)
    assert colocated_bundles([learner, rollout]) == [
        {"CPU": 3.0, "GPU": 0.9},
        {"CPU": 3.0, "GPU": 0.9},
        {"CPU": 1.0, "GPU": 0.4},
    ]
    assert colocated_bundles([RoleSpec("cpu_only", 1)]) == [{"CPU": 1.0}]
    with pytest.raises(ValueError, match="must sum to at most 1"):
        colocated_bundles([RoleSpec("a", 1, gpus_per_actor=1), RoleSpec("b", 1, gpus_per_actor=0.5)])


def test_role_resources_go_into_bundles_and_options():
    learner = RoleSpec("learner", 2, cpus_per_actor=1, resources={"trainer_node": 0.01})
    rollout = RoleSpec("rollout", 1, cpus_per_actor=1, resources={"trainer_node": 0.01, "fast": 1})
    assert colocated_bundles([learner, rollout]) == [
        {"CPU": 2.0, "trainer_node": 0.02, "fast": 1.0},
        {"CPU": 1.0, "trainer_node": 0.01},
    ]
    with pytest.raises(ValueError, match="resources > 0"):
        RoleSpec("learner", 1, resources={"x": 0})


def test_unplaceable_names_what_no_node_has():
    nodes = [{"CPU": 2.0, "rollout_node": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    assert unplaceable([{"CPU": 1.0, "rollout_node": 0.5}] * 2, nodes) is None
    assert unplaceable([{"CPU": 2.0, "GPU": 1.0}], nodes) is None
    # each bundle fits some node, but not all three at once
    assert "need {'CPU': 7.0} in all" in unplaceable([{"CPU": 3.0}, {"CPU": 2.0}, {"CPU": 2.0}], nodes)
    # both resources exist, never on one node
    assert unplaceable([{"CPU": 1.0, "GPU": 1.0, "rollout_node": 0.1}], nodes) == (
        "no node has {'CPU': 1.0, 'GPU': 1.0, 'rollout_node': 0.1}"
    )
    assert unplaceable([{"CPU": 1.0, "learner_node": 1.0}], nodes).startswith("no node has")


def test_role_spec_validation():
    with pytest.raises(ValueError, match="num_actors must be >= 1"):
        RoleSpec("learner", 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        RoleSpec("learner", 1, cpus_per_actor=-1)
