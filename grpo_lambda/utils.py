"""Small shared helpers: atomic file writes, seeding, a phase timer."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one.

    Writes a temporary file in the same folder, fsyncs it and renames it over ``path`` (``os.replace``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """JSON with non-finite floats rejected (``allow_nan=False``): convert them before writing."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False) + "\n")


def step_seed(seed: int, step: int, salt: str = "rollout") -> int:
    """A sampling seed for (run seed, step, salt): the same on a resumed run as on an uninterrupted one."""
    return (
        int.from_bytes(hashlib.sha256(f"{seed}:{step}:{salt}".encode()).digest()[:4], "little") & 0x7FFFFFFF
    )


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and (if installed) torch on this process."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


class Timer:
    """Named wall-clock durations, summed per name::

    timer = Timer()
    with timer("generate"):
        ...
    timer.metrics()  # {"time/generate_s": 1.23}

    `record=False` runs the block untimed (a phase that costs nothing in this set-up gets no metric).
    """

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, record: bool = True) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if record:
                self.durations[name] = self.durations.get(name, 0.0) + time.perf_counter() - start

    def metrics(self, prefix: str = "time/", suffix: str = "_s") -> dict[str, float]:
        return {f"{prefix}{name}{suffix}": value for name, value in self.durations.items()}

    def reset(self) -> None:
        self.durations.clear()
