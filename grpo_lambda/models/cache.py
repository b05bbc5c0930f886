"""Where grpo-lambda keeps models it builds or converts: $GRPO_LAMBDA_CACHE, else ~/.cache/grpo_lambda."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """The cache root; models live under `cache_root() / "models"`."""
    env = os.environ.get("GRPO_LAMBDA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grpo_lambda"


def build_folder_atomically(out_dir: Path, write: Callable[[Path], None]) -> bool:
    """Run `write(tmp)` in a temporary sibling of `out_dir`, then rename it into place, so a killed build leaves
    no half-written folder. Returns False when a concurrent builder renamed its own folder there first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model folder is meant to be shared
    try:
        write(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not out_dir.exists():  # a real failure, not a concurrent builder that won the race
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
