"""Run checkpoints: the learner's DeepSpeed state (model, optimiser, scheduler) plus the driver's state (step,
sampler position, RNG), committed atomically.

Layout under ``run_dir/checkpoints``::

    step_000010/learner/...        DeepSpeed engine checkpoint (written by the learner ranks)
    step_000010/driver.json        step, sampler state, RNG state, weights version
    latest                         the name of the newest complete checkpoint (written last, atomically)

A checkpoint counts only once ``latest`` names it, so a run killed mid-save resumes from the previous one; a step
folder left half-written is replaced when the resumed run saves that step again (`begin`). A checkpoint that cannot
be written (read-only folder, full disk) is removed again (`discard`) and reported by `failure_message`; the one
``latest`` names is never touched. See docs/faults.md.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_lambda.utils import atomic_write_json, atomic_write_text

LATEST = "latest"
DRIVER_STATE = "driver.json"
LOW_SPACE_BYTES = 1 << 20  # a write failed with less free space than this on its filesystem: the disk is full


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (`trainer.on_checkpoint_error=stop`); the message names the folder, the
    cause and the last good checkpoint."""


class CheckpointWriteError(OSError):
    """A learner rank could not write its part of a checkpoint; raised on every rank alike (learner/worker.py)."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step_{step:06d}"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU generator states, JSON-serialisable."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def latest_folder(run_dir: str | Path) -> Path | None:
    """The folder ``latest`` names (complete by construction), or None before the first checkpoint."""
    latest = checkpoint_root(run_dir) / LATEST
    return checkpoint_root(run_dir) / latest.read_text().strip() if latest.is_file() else None


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step_"))
    except ValueError:
        return -1


def _complete(run_dir: str | Path) -> list[Path]:
    """Step folders with a driver state, oldest first."""
    folders = [p for p in checkpoint_root(run_dir).glob("step_*") if _step_of(p) >= 0]
    return sorted((p for p in folders if (p / DRIVER_STATE).is_file()), key=_step_of)


def begin(run_dir: str | Path, step: int) -> Path:
    """Make way for the checkpoint of `step`, before its learner part is written; returns its folder.

    A folder already there is a leftover: half-written by a run killed mid-save, or a checkpoint of steps that a
    run resumed from an earlier checkpoint is now redoing. It is removed, so that it can never pass for complete
    while it is rewritten. Should ``latest`` name it (a resume from an older checkpoint of the same run), ``latest``
    first goes back to the newest complete checkpoint before it (or away, if there is none)."""
    folder = step_dir(run_dir, step)
    if latest_folder(run_dir) == folder:
        older = [p for p in _complete(run_dir) if _step_of(p) < step]
        if older:
            atomic_write_text(checkpoint_root(run_dir) / LATEST, older[-1].name)
        else:
            (checkpoint_root(run_dir) / LATEST).unlink()
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def commit(run_dir: str | Path, step: int, driver_state: dict[str, Any], keep: int = 0) -> Path:
    """Write the driver state of an already-saved learner checkpoint and point ``latest`` at it; then prune: keep
    the newest `keep` complete checkpoints up to this one (0 = all). Folders of later steps (an abandoned attempt
    after a resume) are not counted; they are replaced when the run gets there (`begin`)."""
    folder = step_dir(run_dir, step)
    atomic_write_json(folder / DRIVER_STATE, driver_state)
    atomic_write_text(checkpoint_root(run_dir) / LATEST, folder.name)
    if keep > 0:
        done = [p for p in _complete(run_dir) if _step_of(p) <= step]
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def discard(run_dir: str | Path, step: int) -> None:
    """Remove what a failed save of `step` left (best effort: on a read-only folder nothing can be removed, and
    nothing was written either). The checkpoint ``latest`` names is never touched."""
    folder = step_dir(run_dir, step)
    if folder != latest_folder(run_dir):
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ write failures
def write_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, its cause or context, or the cause a Ray task error carries), or None when
    the failure is not about writing files."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and not _is_ray_error(e):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _is_ray_error(e: BaseException) -> bool:
    """Ray's RayTaskError(OSError) instances are OSErrors too: look at the cause they carry instead."""
    return type(e).__module__.startswith("ray.") or hasattr(e, "as_instanceof_cause")


def write_error_cause(exc: BaseException, path: str | Path) -> str:
    """Why writing under `path` failed, as ``[Errno N] text``. torch.save reports a full disk or a read-only folder
    as a RuntimeError without an errno ("unexpected pos 576 vs 534", "open file failed"): then the filesystem
    holding `path` says (read-only mount, almost no free space, this process's RLIMIT_FSIZE)."""
    os_error = write_error(exc)
    if os_error is not None and os_error.errno:
        return f"[Errno {os_error.errno}] {os.strerror(os_error.errno)}"
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        fs = os.statvfs(probe)
    except OSError:
        fs = None
    if fs is not None and fs.f_flag & os.ST_RDONLY:
        return f"[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}"
    if fs is not None and fs.f_bavail * fs.f_frsize < LOW_SPACE_BYTES:
        free = fs.f_bavail * fs.f_frsize
        return f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)} ({free} bytes free)"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return f"[Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)} (RLIMIT_FSIZE is {limit} bytes)"
    except (ImportError, OSError, ValueError):
        pass
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def failure_message(run_dir: str | Path, step: int, cause: str) -> str:
    last = latest_folder(run_dir)
    return (
        f"checkpoint at step {step} could not be written to {step_dir(run_dir, step)}: {cause}; "
        f"the last good checkpoint is {last if last is not None else 'none (no checkpoint written yet)'}"
    )


def find_resume(run_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint folder to resume from: ``never`` → None; ``auto`` → the run's ``latest`` (None if there is
    none yet); anything else is a checkpoint folder path, which must exist."""
    if resume == "never":
        return None
    if resume == "auto":
        folder = latest_folder(run_dir)
        if folder is None:
            return None
    else:
        folder = Path(resume).expanduser()
    if not (folder / DRIVER_STATE).is_file():
        raise FileNotFoundError(
            f"trainer.resume: {folder} is not a complete checkpoint (no {DRIVER_STATE}); "
            "pass a step_* folder under <run>/checkpoints, resume=auto or resume=never"
        )
    return folder


def load_driver_state(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / DRIVER_STATE).read_text())
