"""Where grpo-lambda keeps models it builds or converts: $GRPO_LAMBDA_CACHE, else ~/.cache/grpo_lambda."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root; models live under `cache_root() / "models"`."""
    env = os.environ.get("GRPO_LAMBDA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grpo_lambda"
