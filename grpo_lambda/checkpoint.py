"""Run checkpoints: the learner's DeepSpeed state (model, optimiser, scheduler) plus the driver's state (step,
sampler position, RNG), committed atomically.

Layout under ``run_dir/checkpoints``::

    step_000010/learner/...        DeepSpeed engine checkpoint (written by the learner ranks)
    step_000010/driver.json        step, sampler state, RNG state, weights version
    latest                         the name of the newest complete checkpoint (written last, atomically)

A checkpoint counts only once ``latest`` names it, so a run killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_lambda.utils import atomic_write_json, atomic_write_text

LATEST = "latest"
DRIVER_STATE = "driver.json"


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


def commit(run_dir: str | Path, step: int, driver_state: dict[str, Any], keep: int = 0) -> Path:
    """Write the driver state of an already-saved learner checkpoint and point ``latest`` at it; prune old ones."""
    folder = step_dir(run_dir, step)
    atomic_write_json(folder / DRIVER_STATE, driver_state)
    atomic_write_text(checkpoint_root(run_dir) / LATEST, folder.name)
    if keep > 0:
        done = sorted(p for p in checkpoint_root(run_dir).glob("step_*") if (p / DRIVER_STATE).is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def find_resume(run_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint folder to resume from: ``never`` → None; ``auto`` → the run's ``latest`` (None if there is
    none yet); anything else is a checkpoint folder path, which must exist."""
    if resume == "never":
        return None
    if resume == "auto":
        latest = checkpoint_root(run_dir) / LATEST
        if not latest.is_file():
            return None
        folder = checkpoint_root(run_dir) / latest.read_text().strip()
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
