"""Every private internal in grpo_lambda/compat.py still exists in the installed DeepSpeed, torch and Ray.

An upgrade that removes or renames one fails here, naming it, instead of somewhere deep in a run (or silently)."""

from __future__ import annotations

import importlib
import inspect
from datetime import timedelta

import pytest
import torch

from grpo_lambda import compat


def test_deepspeed_shm_comm_switch_is_honoured(monkeypatch):
    """DeepSpeed's TorchBackend builds no shared-memory op once it is switched off (no JIT, no lock to hang on)."""
    import deepspeed.ops

    from grpo_lambda.learner.deepspeed_setup import SHM_COMM_ENV, disable_shm_comm_build

    assert isinstance(deepspeed.ops.__compatible_ops__, dict), "deepspeed.ops.__compatible_ops__ is gone"
    ds_torch = importlib.import_module(
        "deepspeed.comm.torch"
    )  # the attribute `deepspeed.comm.torch` is torch
    saved = deepspeed.ops.__compatible_ops__.get(compat.SHM_COMM_OP)
    monkeypatch.delenv(SHM_COMM_ENV, raising=False)
    try:
        assert disable_shm_comm_build() is True
        assert deepspeed.ops.__compatible_ops__[compat.SHM_COMM_OP] is False
        assert ds_torch.build_shm_op() is None
    finally:
        deepspeed.ops.__compatible_ops__[compat.SHM_COMM_OP] = saved
    monkeypatch.setenv(SHM_COMM_ENV, "1")
    assert disable_shm_comm_build() is False


def test_deepspeed_optimisers_record_the_global_grad_norm():
    """`deepspeed_records_grad_norm` looks for `_global_grad_norm`, which the ZeRO optimisers set."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    for cls in (DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3):
        assert "self._global_grad_norm" in inspect.getsource(cls), (
            f"{cls.__name__} no longer sets _global_grad_norm"
        )

    class Recording:
        _global_grad_norm = 0.0

    assert compat.deepspeed_records_grad_norm(Recording())
    assert not compat.deepspeed_records_grad_norm(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))


def test_zero3_parameter_attributes():
    """ZeRO-3 tags partitioned parameters with ds_id and keeps their full size in ds_numel."""
    from deepspeed.runtime.zero import partition_parameters

    source = inspect.getsource(partition_parameters)
    assert "param.ds_id = " in source and "ds_numel" in source, "ZeRO-3 no longer sets ds_id / ds_numel"
    plain = torch.nn.Parameter(torch.zeros(3, 4))
    assert not compat.is_zero3_partitioned(plain) and compat.full_numel(plain) == 12
    plain.ds_id, plain.ds_numel = 7, 99  # what ZeRO-3 adds
    assert compat.is_zero3_partitioned(plain) and compat.full_numel(plain) == 99


def test_raw_process_group_constructors():
    """A one-rank gloo group from a TCPStore, outside torch.distributed's default group; NCCL's private
    Options._timeout where NCCL is built in."""
    import torch.distributed as dist

    from grpo_lambda.distributed.rendezvous import find_free_port

    store = dist.TCPStore("127.0.0.1", find_free_port(), 1, is_master=True, timeout=timedelta(seconds=30))
    group = compat.new_process_group("gloo", store, 0, 1, timedelta(seconds=30))
    t = torch.ones(2)
    opts = dist.AllreduceOptions()
    group.allreduce([t], opts).wait()
    assert torch.equal(t, torch.ones(2))
    # gloo on a given address: the private `_Options._devices` and `create_device(hostname=)`
    store = dist.TCPStore("127.0.0.1", find_free_port(), 1, is_master=True, timeout=timedelta(seconds=30))
    group = compat.new_process_group("gloo", store, 0, 1, timedelta(seconds=30), host="127.0.0.1")
    group.allreduce([t], opts).wait()
    assert torch.equal(t, torch.ones(2))
    with pytest.raises(ValueError, match="gloo or nccl"):
        compat.new_process_group("mpi", store, 0, 1, timedelta(seconds=30))
    if dist.is_nccl_available():
        assert hasattr(dist.ProcessGroupNCCL.Options(), "_timeout"), (
            "ProcessGroupNCCL.Options._timeout is gone"
        )


def test_ray_internals(monkeypatch):
    """The token-auth helper the client uses and ray.init's private `_node_ip_address`."""
    import ray
    from ray._private.authentication.authentication_token_setup import (  # noqa: F401
        maybe_enable_token_auth_if_token_available,
    )

    assert "warn_if_disabled" in inspect.signature(maybe_enable_token_auth_if_token_available).parameters
    # ray.init pops it from **kwargs (ray/_private/worker.py); any other key it would reject
    assert 'kwargs.pop("_node_ip_address"' in inspect.getsource(ray.init), (
        "ray.init no longer takes _node_ip_address"
    )
    # A loopback _node_ip_address survives ray.init only while ENABLE_RAY_CLUSTER is False (ray_bind_localhost);
    # otherwise it becomes the LAN IP. The bare rule is checked: a Ray already running in this process (the
    # integration tests' session cluster) would answer with its own node's IP, so it is hidden for the check.
    from ray._private import ray_constants, services

    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)
    assert "resolve_ip_for_localhost(_node_ip_address)" in inspect.getsource(ray.init)
    monkeypatch.setattr(ray._private.worker, "_global_node", None)
    saved = ray_constants.ENABLE_RAY_CLUSTER
    with compat.ray_bind_localhost() as kwargs:
        assert kwargs == {"_node_ip_address": "127.0.0.1"}
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER is saved
    # actor_id_hex: the handle's private id, in the form RayActorError.actor_id carries
    from ray.actor import ActorHandle

    assert isinstance(ActorHandle.__dict__.get("_actor_id"), property), "ActorHandle._actor_id is gone"
    assert "self.actor_id = actor_id" in inspect.getsource(ray.exceptions.RayActorError.__init__)


def test_deepspeed_checkpoint_loads_go_through_torch_load():
    """DeepSpeed's checkpoint engine and zero_to_fp32 call `torch.load` by attribute (so `weights_only_torch_load`
    reaches them), and the classes it pickles into checkpoints still exist and load with weights_only=True."""
    import io

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.utils import zero_to_fp32

    assert "torch.load(" in inspect.getsource(TorchCheckpointEngine.load)
    assert "torch.load(" in inspect.getsource(zero_to_fp32)
    loss_scaler, zero_stage, fragment_address = compat.deepspeed_checkpoint_globals()
    state = {"loss_scaler": loss_scaler(2.0), "zero_stage": zero_stage(2),
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "t": torch.ones(2)}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with compat.weights_only_torch_load(compat.deepspeed_checkpoint_globals()):
        loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)  # forced to True
    assert loaded["zero_stage"] is zero_stage(2) and loaded["param_slice_mappings"][0]["w"].numel == 4
    assert vars(loaded["loss_scaler"]) == vars(state["loss_scaler"]) and torch.equal(loaded["t"], state["t"])
    with pytest.raises(Exception, match="GLOBAL"):  # without the allow-list they are refused
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


class EnumByName:
    """Pickles as Python 3.11.0-3.11.3 pickle an Enum member: `getattr(cls, name)` (3.11.4+: `cls(value)`)."""

    def __init__(self, cls, name):
        self.cls, self.name = cls, name

    def __reduce__(self):
        return getattr, (self.cls, self.name)


def test_enum_members_pickled_by_name_load_weights_only():
    """A DeepSpeed checkpoint saved under Python 3.11.0-3.11.3 holds its ZeroStageEnum as `getattr(cls, name)`:
    torch.save writes `__builtin__ getattr` (protocol 2), torch's weights-only unpickler reads it as
    `compat.ENUM_BY_NAME_GLOBAL` and calls what is registered under that name (a `(callable, name)` safe global)."""
    import io

    _, zero_stage, _ = compat.deepspeed_checkpoint_globals()
    buffer = io.BytesIO()
    torch.save({"zero_stage": EnumByName(zero_stage, "gradients"), "alias": EnumByName(zero_stage, "max_stage"),
                "t": torch.ones(2)}, buffer)  # fmt: skip
    # GLOBAL '__builtin__ getattr', as Python 3.11.2 writes it:
    assert b"c__builtin__\ngetattr\n" in buffer.getvalue()
    with compat.weights_only_torch_load(compat.deepspeed_checkpoint_globals()):
        loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)  # forced to True
    assert loaded["zero_stage"] is zero_stage.gradients and loaded["alias"] is zero_stage.weights
    assert torch.equal(loaded["t"], torch.ones(2))
    # not allowed outside the block (torch's message drops "builtins."):
    with pytest.raises(Exception, match="GLOBAL getattr was not an allowed global"):
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert not any(isinstance(g, tuple) for g in torch.serialization.get_safe_globals())  # unregistered after
