"""A learner rank's DeepSpeed checkpoint, written by every rank together and read back with `weights_only=True`.

    path = save_engine_checkpoint(engine, rank, world_size, ckpt_dir, tag, client_state)   # all ranks call it
    client_state = load_engine_checkpoint(engine, ckpt_dir, tag)

The save is atomic (into `<tag>.tmp`, renamed by rank 0 once every rank finished, then `latest` replaced) and
agreed: after each phase the ranks compare notes, so a rank that cannot write (read-only folder, full disk) leaves
no other rank waiting in a collective, and every rank raises the same `CheckpointWriteError` (docs/faults.md).
Multi-node: ckpt_dir must be a shared filesystem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor


def save_engine_checkpoint(
    engine, rank: int, world_size: int, ckpt_dir: str, tag: str, client_state: dict
) -> str:
    """DeepSpeed engine checkpoint (model, optimiser, LR schedule) at ckpt_dir/tag; returns its path. The partial
    files of a failed save are the caller's to remove (checkpoint.discard)."""
    import torch.distributed as dist

    root, tmp_tag = Path(ckpt_dir), f"{tag}.tmp"

    def prepare() -> None:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # leftovers of an interrupted save

    def write() -> None:
        try:
            engine.save_checkpoint(str(root), tag=tmp_tag, client_state=client_state, save_latest=False)
        except dist.DistError:
            raise
        except Exception:
            # DeepSpeed's writes (torch.save) sit between its collectives and its closing barrier, in which the
            # other ranks now wait: meet them there, then report.
            dist.barrier()
            raise

    def publish() -> None:
        final, old = root / tag, root / f"{tag}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(root / tmp_tag, final)
        shutil.rmtree(old, ignore_errors=True)
        (root / "latest.tmp").write_text(tag)
        os.replace(root / "latest.tmp", root / "latest")

    _write_on_all_ranks(prepare if rank == 0 else None, root, rank, world_size)
    _write_on_all_ranks(write, root, rank, world_size)
    _write_on_all_ranks(publish if rank == 0 else None, root, rank, world_size)
    return str(root / tag)


def _write_on_all_ranks(write, root: Path, rank: int, world_size: int) -> None:
    """Run `write` here (None: nothing to write on this rank), then learn whether every rank's write succeeded
    (an all-gather: every rank must call this); if any failed, raise CheckpointWriteError on all ranks alike."""
    import torch.distributed as dist

    from grpo_lambda.checkpoint import CheckpointWriteError, write_error_cause

    failure = None
    if write is not None:
        try:
            write()
        except dist.DistError:  # a peer is gone: no agreement possible (the learner-failure path)
            raise
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:300]
            failure = (
                f"{write_error_cause(exc, root)} on learner rank {rank} ({type(exc).__name__}: {detail})"
            )
    failures: list[str | None] = [None] * world_size
    dist.all_gather_object(failures, failure)
    failed = [f for f in failures if f]
    if failed:
        more = f"; {len(failed) - 1} more rank(s) failed" if len(failed) > 1 else ""
        raise CheckpointWriteError(failed[0] + more)


def load_engine_checkpoint(engine, ckpt_dir: str, tag: str | None = None) -> dict:
    """Restore model, optimiser and LR schedule from ckpt_dir/tag (tag None: the one named in `latest`); returns
    the client_state. DeepSpeed's own torch.load calls run with weights_only=True and an allow-list of its three
    classes (compat.py, docs/security.md)."""
    from grpo_lambda.compat import deepspeed_checkpoint_globals, weights_only_torch_load

    root = Path(ckpt_dir)
    if tag is None:
        latest = root / "latest"
        if not latest.is_file():
            raise FileNotFoundError(
                f"{latest} not found: pass tag= or point at a folder written by save_checkpoint"
            )
        tag = latest.read_text().strip()
    if not (root / tag).is_dir():
        raise FileNotFoundError(f"checkpoint {root / tag} does not exist")
    with weights_only_torch_load(deepspeed_checkpoint_globals()):
        path, client_state = engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint at {root / tag}")
    return dict(client_state or {})


def digest_state(digest, obj, depth: int = 0) -> None:
    """Feed a (nested) state dict into `digest`: tensors by dtype, shape and bytes; containers in key order; plain
    values by repr; other objects (a loss scaler) by their attributes, a few levels deep."""
    if isinstance(obj, Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor:{flat.dtype}:{tuple(obj.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            digest.update(f"key:{key!r}".encode())
            digest_state(digest, obj[key], depth + 1)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"seq:{len(obj)}".encode())
        for value in obj:
            digest_state(digest, value, depth + 1)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        digest.update(repr(obj).encode())
    elif hasattr(obj, "__dict__") and depth < 6:
        digest.update(type(obj).__name__.encode())
        digest_state(digest, vars(obj), depth + 1)
    else:
        digest.update(type(obj).__name__.encode())


def param_checksum(engine) -> str:
    """sha256 over every full parameter of `engine.module` (name, dtype, shape, bytes); equal on all ranks iff they
    agree."""
    from .weights import full_named_tensors

    digest = hashlib.sha256()
    for name, value in sorted(full_named_tensors(engine.module, on_this_rank=True), key=lambda kv: kv[0]):
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def optimizer_checksum(engine) -> str:
    """sha256 of this rank's optimiser state (its ZeRO partition: fp32 master weights, moments and step counts,
    loss scaler) and LR schedule: what the next update depends on, which a skipped step leaves unchanged.
    Left out: DeepSpeed's record of how the last step went (`overflow`) and ZeRO-0 bf16's count of the steps
    attempted (`cur_iter` of its static loss scale 1), which move on a skipped step by design."""
    digest = hashlib.sha256()
    state = engine.optimizer.state_dict()
    digest_state(digest, {k: v for k, v in state.items() if k not in ("overflow", "cur_iter")})
    if engine.lr_scheduler is not None:
        digest_state(digest, engine.lr_scheduler.state_dict())
    return digest.hexdigest()
