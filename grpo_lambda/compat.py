"""Every private internal of DeepSpeed, torch and Ray that grpo-lambda touches, in one module.

A private name can disappear in any release without a deprecation warning. Keeping them here means an upgrade
breaks one file, and `tests/unit/test_compat.py` names the internal that went missing instead of a run failing
somewhere else (or, worse, silently computing something different). Each function says the version it was
written against and what it relies on. (vLLM's internals live in `rollout/vllm_readback.py`, the one module
that reads an engine's weights back.)

| internal | written against | used for |
|---|---|---|
| `deepspeed.ops.__compatible_ops__` | DeepSpeed 0.19.8 | skip the shared-memory comm op's JIT build |
| ZeRO-3 parameter attributes `ds_id`, `ds_numel` | DeepSpeed 0.19.8 | tell partitioned parameters apart, count them |
| `optimizer._global_grad_norm` | DeepSpeed 0.19.8 | whether DeepSpeed records the global grad norm |
| the classes DeepSpeed pickles into its checkpoint files; its `torch.load(weights_only=False)` calls | DeepSpeed 0.19.8 | load checkpoints with `weights_only=True` |
| `builtins.getattr`, the global Python 3.11.0-3.11.3 pickle enum members with (torch reads protocol 2's `__builtin__ getattr` as it), registered as a `(callable, name)` safe global | torch 2.13 | load checkpoints saved under those Pythons (`enum_member_by_name`) |
| `ProcessGroupGloo` / `ProcessGroupNCCL` constructors, `ProcessGroupNCCL.Options._timeout`, `ProcessGroupGloo._Options._devices` | torch 2.13 | the weight-sync group beside DeepSpeed's default group, on a given address |
| `ray._private.authentication...maybe_enable_token_auth_if_token_available` | Ray 2.60 | a client joining a token-auth cluster |
| `ray.init(_node_ip_address=...)`, `ray._private.ray_constants.ENABLE_RAY_CLUSTER` | Ray 2.60 | keep a local cluster's ports on 127.0.0.1 |
| `ActorHandle._actor_id` | Ray 2.60 | which actor a `RayActorError` (its `actor_id`) is about |
"""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from enum import Enum
from typing import Any

DEEPSPEED_VERSION = "0.19.8"
TORCH_VERSION = "2.13"
RAY_VERSION = "2.60"

SHM_COMM_OP = "deepspeed_shm_comm"


# ------------------------------------------------------------------------------------------------ DeepSpeed
def skip_deepspeed_shm_comm_build() -> None:
    """Make DeepSpeed's TorchBackend skip its shared-memory all-reduce op (DeepSpeed 0.19.8).

    `deepspeed/comm/torch.py:build_shm_op` returns None when `deepspeed.ops.__compatible_ops__[SHM_COMM_OP]` is
    False; that dict is built once and cached, so the edit persists for the process."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def is_zero3_partitioned(param: Any) -> bool:
    """Whether `param` is a ZeRO-3 partitioned parameter (DeepSpeed 0.19.8 tags those with `ds_id`)."""
    return hasattr(param, "ds_id")


def full_numel(param: Any) -> int:
    """Elements of the full parameter; a ZeRO-3 partition keeps the full count in `ds_numel` (DeepSpeed 0.19.8)."""
    return int(getattr(param, "ds_numel", param.numel()))


def deepspeed_records_grad_norm(optimizer: Any) -> bool:
    """Whether DeepSpeed's optimiser wrapper computes the global gradient norm that `engine.get_global_grad_norm()`
    returns (DeepSpeed 0.19.8: the ZeRO optimisers and the bf16 wrapper set `_global_grad_norm`; a plain torch
    optimiser at ZeRO-0 in fp32 does not, and the caller must measure the norm itself before the step)."""
    return hasattr(optimizer, "_global_grad_norm")


def deepspeed_checkpoint_globals() -> list[type]:
    """The Python classes DeepSpeed 0.19.8 pickles into the checkpoint files our learner writes, besides tensors and
    plain containers (`torch.serialization.get_unsafe_globals_in_checkpoint` over ZeRO 0-3, fp32 and bf16, full and
    LoRA checkpoints): the loss scaler's state and the ZeRO stage in `*_optim_states.pt`, and the bf16 optimiser's
    `param_slice_mappings` entries. The model-state files hold none. `torch.load(weights_only=True)` accepts these
    and nothing else (`weights_only_torch_load`)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


# Python 3.11.0-3.11.3 pickle an Enum member by name, as `getattr(cls, name)` (GLOBAL + REDUCE); 3.11.4+ and the
# other releases pickle it by value, as `cls(value)`. torch 2.13's weights-only unpickler reads protocol 2's
# `__builtin__ getattr` (what `torch.save` writes) as this name.
ENUM_BY_NAME_GLOBAL = "builtins.getattr"


def enum_member_by_name(enums: Iterable[type]) -> Callable[[Any, Any], Enum]:
    """The stand-in `weights_only_torch_load` registers as `builtins.getattr`: `getattr(cls, name)` only where `cls`
    is one of the Enum classes in `enums` and `name` one of its members (`__members__`, aliases included); anything
    else raises `pickle.UnpicklingError`. The real `getattr` would hand a checkpoint any attribute of any object it
    can build (an allowed class's methods, a function's module globals through `__globals__` ...)."""
    allowed = tuple(cls for cls in enums if isinstance(cls, type) and issubclass(cls, Enum))

    def getattr_enum_member(cls: Any, name: Any) -> Enum:
        if any(cls is enum for enum in allowed) and type(name) is str and name in cls.__members__:
            return cls.__members__[name]
        what = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else reprlib.repr(cls)
        names = ", ".join(f"{enum.__module__}.{enum.__qualname__}" for enum in allowed) or "none"
        raise pickle.UnpicklingError(
            f"GLOBAL {ENUM_BY_NAME_GLOBAL} refused getattr({what}, {reprlib.repr(name)}): a checkpoint may only "
            f"use it for a member of an allow-listed Enum class (allowed: {names})"
        )

    return getattr_enum_member


@contextmanager
def weights_only_torch_load(allowed: Sequence[type] = ()) -> Iterator[None]:
    """Inside the block every `torch.load` runs with `weights_only=True`, allowing `allowed` classes besides tensors
    and plain containers, including the calls DeepSpeed 0.19.8 makes with `weights_only=False` (its
    `TorchCheckpointEngine.load`, used by `engine.load_checkpoint`, and `utils.zero_to_fp32`). A file holding any
    other Python object raises `pickle.UnpicklingError` naming it instead of running it.

    A member of an allowed Enum class also loads when pickled by name, as Python 3.11.0-3.11.3 write it
    (`getattr(cls, name)`): `builtins.getattr` is mapped to `enum_member_by_name(allowed)`, never to the real one.

    It replaces the `torch.load` attribute for the block (DeepSpeed calls it as `torch.load`), so it applies to every
    thread of the process meanwhile: use it around a load, not around a run."""
    import torch

    real_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    by_name = (enum_member_by_name(allowed), ENUM_BY_NAME_GLOBAL)
    with torch.serialization.safe_globals([*allowed, by_name]):
        torch.load = load
        try:
            yield
        finally:
            torch.load = real_load


# ------------------------------------------------------------------------------------------------ torch
def new_process_group(
    backend: str, store: Any, rank: int, world_size: int, timeout: timedelta, host: str | None = None
) -> Any:
    """A gloo or NCCL process group on `store`, independent of torch.distributed's default group (torch 2.13).

    The raw constructors are the only way to build a group without `init_process_group`, which DeepSpeed (learner)
    and vLLM (engines) already own in the same processes. NCCL takes its timeout through the private
    `Options._timeout`; every collective on the group then fails after `timeout` instead of hanging. `host` (gloo):
    the address this rank's gloo connections listen on (`_Options._devices`); None = gloo's default, the address
    the machine's hostname resolves to."""
    import torch.distributed as dist

    if backend == "gloo":
        if host is None:
            return dist.ProcessGroupGloo(store, rank, world_size, timeout)
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        return dist.ProcessGroupGloo(store, rank, world_size, options)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise ValueError(f"process group backend must be gloo or nccl, got {backend!r}")


# ------------------------------------------------------------------------------------------------ Ray
def use_ray_token_if_available() -> bool:
    """Turn Ray's client token mode on when RAY_AUTH_MODE is unset and a token exists where Ray looks for one
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), as `ray start` itself does (Ray 2.60).

    A cluster started by `ray start` requires the token (Ray >= 2.59) and a client left in the default mode fails
    with a bare "Failed to connect"; a cluster without authentication ignores it. Ray's own rule also refreshes its
    cached config, which reads the mode once per process. Returns whether token mode is on."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def actor_id_hex(handle: Any) -> str:
    """The hex actor id of a Ray actor handle, as `RayActorError.actor_id` gives it (Ray 2.60: the private
    `ActorHandle._actor_id` property; Ray has no public accessor on the handle)."""
    return handle._actor_id.hex()


@contextmanager
def ray_bind_localhost() -> Iterator[dict[str, str]]:
    """`ray.init` keyword arguments that keep a local cluster on 127.0.0.1 (Ray 2.60); call ray.init inside:

        with ray_bind_localhost() as kwargs:
            ray.init(num_cpus=4, **kwargs)

    The private `_node_ip_address="127.0.0.1"` alone does nothing on Linux: ray.init turns a loopback address into
    the node's LAN IP (`services.resolve_ip_for_localhost` -> `get_node_ip_address`) unless
    `ray_constants.ENABLE_RAY_CLUSTER` is False, as it is by default on macOS and Windows. So the block sets it False
    while ray.init resolves the address. With the node's IP 127.0.0.1 every server Ray starts listens on loopback
    only: the GCS, raylet, object-manager and worker gRPC servers (`listen_to_localhost_only` when the node IP is
    127.0.0.1), the dashboard agent, the runtime-env agent and the metrics endpoints (`is_localhost(node_ip)`);
    otherwise they listen on every interface. tests/integration/test_security.py checks the sockets."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield {"_node_ip_address": "127.0.0.1"}
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
