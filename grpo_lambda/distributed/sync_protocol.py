"""The broadcast weight-sync wire protocol: learner rank 0 streams its weights, bucket by bucket, to every engine.

One process group (the "sync group", separate from DeepSpeed's) holds learner rank 0 as rank 0 and every engine
worker as ranks 1.. (engine i, tensor-parallel rank j: 1 + i·tp + j): gloo on CPU, nccl between GPUs. It is built
once from a TCPStore at rank 0's address, without touching torch.distributed's default group, so it lives beside
DeepSpeed's group in the learner and beside vLLM's own groups in the engines.

One sync is a sequence of buckets, each three broadcasts from rank 0:
  header  int64[1]        length of the JSON metadata in bytes (0 = end of stream)
  meta    uint8[length]   {"version": v, "dtype": "bfloat16", "tensors": [[name, shape], ...]}
  payload dtype[numel]    the bucket's tensors, flattened and concatenated in that order
A bucket holds tensors of one dtype up to `bucket_bytes` (a larger tensor travels alone), so neither side ever holds
more than one bucket beyond the model itself: the receiver hands views of the payload straight to the engine's
weight loader and the sender gathers (ZeRO-3) one tensor at a time. The version in every bucket must be the one
the receiver expects: a sender and a receiver in different sync rounds fail loudly instead of mixing weights.

No vLLM, Ray or DeepSpeed here: learner rank 0 holds a `WeightSender`, each vLLM worker (rollout/vllm_engine.py's
extension) a `WeightReceiver` per sync; `weight_sync.WeightSync` on the driver sets both up and runs each sync.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import Tensor

from grpo_lambda.compat import new_process_group
from grpo_lambda.distributed.rendezvous import bound_tcp_store, is_loopback

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                                      torch.int64, torch.int32, torch.uint8, torch.bool)}  # fmt: skip


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported weight dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def new_sync_group(backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float):
    """A process group of `world_size` ranks that meet at host:port (rank 0 hosts the store), independent of
    torch.distributed's default group. Every collective on it fails after `timeout_s` instead of hanging."""
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"sync group backend must be gloo or nccl, got {backend!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    timeout = timedelta(seconds=timeout_s)
    # Rank 0's store listens on `host` only (loopback on one node, the node's IP across nodes), and on one node the
    # gloo connections too (docs/security.md).
    store = bound_tcp_store(host, port, world_size, is_master=rank == 0, timeout=timeout)
    return new_process_group(
        backend, store, rank, world_size, timeout, host=host if is_loopback(host) else None
    )


def close_group(group) -> None:
    """Abort a sync group (a broken one too): its connections close, so a peer blocked in a collective on it
    fails at once instead of at the timeout. Dropping the last reference then frees it."""
    abort = getattr(group, "abort", None) or getattr(group, "shutdown", None)
    if abort is not None:
        try:
            abort()
        except Exception:  # noqa: BLE001 - aborting a group whose peers are gone may itself fail; that is fine
            pass


def _broadcast(group, tensor: Tensor) -> Tensor:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()
    return tensor


@dataclass
class SyncStats:
    """What one sync moved (the sender's and each receiver's must agree)."""

    tensors: int = 0
    bytes: int = 0
    buckets: int = 0

    def add(self, bucket: list[tuple[str, Tensor]]) -> None:
        self.tensors += len(bucket)
        self.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
        self.buckets += 1

    def as_dict(self) -> dict[str, int]:
        return {"tensors": self.tensors, "bytes": self.bytes, "buckets": self.buckets}


# ------------------------------------------------------------------------------------------------ pure parts
def iter_buckets(
    named_tensors: Iterable[tuple[str, Tensor]], bucket_bytes: int, dtype: torch.dtype | None = None
) -> Iterator[list[tuple[str, Tensor]]]:
    """Group (name, tensor) pairs, in order, into buckets of one dtype and at most `bucket_bytes` each (a tensor
    larger than that forms its own bucket). Floating tensors are cast to `dtype` when it is given (fp32 master
    weights -> a bf16 engine: half the bytes on the wire)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (tensor.dtype != bucket[0][1].dtype or size + nbytes > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def flatten_bucket(bucket: list[tuple[str, Tensor]], version: int) -> tuple[bytes, Tensor]:
    """(JSON metadata, one flat tensor holding every tensor of the bucket in order)."""
    dtype = bucket[0][1].dtype
    meta = {
        "version": version,
        "dtype": dtype_name(dtype),
        "tensors": [[name, list(t.shape)] for name, t in bucket],
    }
    flat = torch.cat([t.detach().reshape(-1) for _, t in bucket])
    return json.dumps(meta).encode(), flat


def unflatten_bucket(meta: dict, flat: Tensor) -> list[tuple[str, Tensor]]:
    """The (name, tensor) views of `flat` that `flatten_bucket` packed."""
    shapes = [torch.Size(shape) for _, shape in meta["tensors"]]
    sizes = [s.numel() for s in shapes]
    if sum(sizes) != flat.numel():
        raise ValueError(f"bucket payload has {flat.numel()} elements, its metadata describes {sum(sizes)}")
    return [
        (name, part.view(shape))
        for (name, _), part, shape in zip(meta["tensors"], flat.split(sizes), shapes, strict=True)
    ]


def bucket_numel(meta: dict) -> int:
    return sum(torch.Size(shape).numel() for _, shape in meta["tensors"])


# ------------------------------------------------------------------------------------------------ the wire
def send_weights(
    group,
    named_tensors: Iterable[tuple[str, Tensor]],
    version: int,
    *,
    bucket_bytes: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> SyncStats:
    """Rank 0: broadcast every (name, tensor) to the group's other ranks in buckets, then the end marker."""
    stats = SyncStats()
    for bucket in iter_buckets(named_tensors, bucket_bytes, dtype):
        meta, flat = flatten_bucket(bucket, version)
        _broadcast(group, torch.tensor([len(meta)], dtype=torch.int64, device=device))
        _broadcast(group, torch.frombuffer(bytearray(meta), dtype=torch.uint8).to(device))
        _broadcast(group, flat.to(device))
        stats.add(bucket)
    _broadcast(group, torch.zeros(1, dtype=torch.int64, device=device))
    return stats


class WeightSender:
    """Rank 0 of the sync group (learner rank 0): `send` streams (name, tensor) pairs to every receiver.

    dtype: the engines' weight dtype; floating tensors are cast to it before sending (fp32 master weights -> a
    bf16 engine: half the bytes). nccl sends from this process's current GPU, gloo from host memory."""

    def __init__(
        self,
        host: str,
        port: int,
        world_size: int,
        *,
        backend: str,
        timeout_s: float,
        dtype: str,
        bucket_bytes: int,
    ):
        self.group = new_sync_group(backend, host, port, 0, world_size, timeout_s)
        self.dtype, self.bucket_bytes = parse_dtype(dtype), bucket_bytes
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )

    def close(self) -> None:
        """Abort the group: its connections close and peers blocked in a broadcast fail instead of waiting."""
        close_group(self.group)
        self.group = None

    def send(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> SyncStats:
        return send_weights(self.group, named_tensors, version, bucket_bytes=self.bucket_bytes, dtype=self.dtype,
                            device=self.device)  # fmt: skip


class WeightReceiver:
    """Ranks > 0: `tensors()` yields (name, tensor) as buckets arrive, for an engine's weight loader to consume;
    `finish()` drains what the loader left (so the group stays in step) and returns the stats."""

    def __init__(
        self, group, version: int, device: torch.device | str = "cpu", aliases: dict[str, str] | None = None
    ):
        """aliases: {source name: extra name} to yield again under a second name (a tied lm_head)."""
        self.group, self.version, self.device = group, version, device
        self.aliases = aliases or {}
        self.stats = SyncStats()
        self._done = False
        self._stream = self._receive()

    def _receive(self) -> Iterator[tuple[str, Tensor]]:
        while True:
            length = int(_broadcast(self.group, torch.zeros(1, dtype=torch.int64, device=self.device)).item())
            if length == 0:
                self._done = True
                return
            raw = _broadcast(self.group, torch.empty(length, dtype=torch.uint8, device=self.device))
            meta = json.loads(raw.cpu().numpy().tobytes())
            if meta["version"] != self.version:
                raise RuntimeError(
                    f"weight sync out of step: this engine expects version {self.version}, the learner sends "
                    f"{meta['version']}"
                )
            flat = torch.empty(bucket_numel(meta), dtype=parse_dtype(meta["dtype"]), device=self.device)
            bucket = unflatten_bucket(meta, _broadcast(self.group, flat))
            self.stats.add(bucket)
            for name, tensor in bucket:
                yield name, tensor
                if name in self.aliases:
                    yield self.aliases[name], tensor

    def tensors(self) -> Iterator[tuple[str, Tensor]]:
        return self._stream

    def finish(self) -> SyncStats:
        left = sum(1 for _ in self._stream)
        if left:
            raise RuntimeError(
                f"the engine's weight loader stopped {left} tensors before the end of the stream"
            )
        if not self._done:
            raise RuntimeError("the weight stream ended without its end marker")
        return self.stats
