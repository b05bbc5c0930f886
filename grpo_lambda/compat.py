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
| `ProcessGroupGloo` / `ProcessGroupNCCL` constructors, `ProcessGroupNCCL.Options._timeout` | torch 2.13 | the weight-sync group beside DeepSpeed's default group |
| `ray._private.authentication...maybe_enable_token_auth_if_token_available` | Ray 2.60 | a client joining a token-auth cluster |
| `ray.init(_node_ip_address=...)` | Ray 2.60 | keep a local cluster's ports on 127.0.0.1 |
"""

from __future__ import annotations

from datetime import timedelta
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


# ------------------------------------------------------------------------------------------------ torch
def new_process_group(backend: str, store: Any, rank: int, world_size: int, timeout: timedelta) -> Any:
    """A gloo or NCCL process group on `store`, independent of torch.distributed's default group (torch 2.13).

    The raw constructors are the only way to build a group without `init_process_group`, which DeepSpeed (learner)
    and vLLM (engines) already own in the same processes. NCCL takes its timeout through the private
    `Options._timeout`; every collective on the group then fails after `timeout` instead of hanging."""
    import torch.distributed as dist

    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
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


def ray_init_bind_localhost() -> dict[str, str]:
    """`ray.init` keyword arguments that keep a local cluster's ports on 127.0.0.1 (Ray 2.60: the private
    `_node_ip_address`; without it Ray binds to the eth0 address)."""
    return {"_node_ip_address": "127.0.0.1"}
