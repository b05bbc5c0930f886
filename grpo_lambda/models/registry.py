"""`resolve_model`: a local model folder, or a name grpo-lambda knows how to build offline."""

from __future__ import annotations

import os
from pathlib import Path

from grpo_lambda.models.cache import cache_root
from grpo_lambda.models.smollm2 import SMOLLM2_NAME, ensure_smollm2
from grpo_lambda.models.tiny import build_tiny_model

TINY_NAME = "tiny"
MODEL_NAMES = (TINY_NAME, SMOLLM2_NAME)


def resolve_model(path_or_name: str | os.PathLike) -> Path:
    """A Hugging Face folder for `path_or_name`: an existing local folder (must hold config.json), or
    `tiny` (random 2-layer Llama, built into the cache) or `smollm2-135m-instruct` (converted from GGUF)."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {path} has no config.json; is it a Hugging Face model folder?"
            )
        return path
    name = str(path_or_name)
    if name == TINY_NAME:
        return build_tiny_model(cache_root() / "models" / "tiny-llama")
    if name == SMOLLM2_NAME:
        return ensure_smollm2()
    raise ValueError(
        f"model {name!r} is neither an existing folder nor a known name {MODEL_NAMES}; "
        "the model hub is not used (offline): pass a local Hugging Face folder"
    )
