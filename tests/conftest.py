"""Shared fixtures: offline tiny models (built once per session), a local Ray cluster, the data folder.

Heavy imports (ray, transformers) happen inside the fixtures, so `pytest -m "not integration"` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR_ENV = "GRPO_LAMBDA_DATA_DIR"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 128, 2 heads of 64, untied, fp32) with the offline BPE tokenizer."""
    from grpo_lambda.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_tied_model_dir(tmp_path_factory) -> Path:
    """Like `tiny_model_dir` but with tied input/output embeddings and grouped-query attention (1 KV head),
    the shape of SmolLM2 and Qwen2.5-0.5B: exercises the tied lm_head path of weight sync."""
    from grpo_lambda.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-llama-tied",
        seed=1,
        num_kv_heads=1,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster for the whole session (4 logical CPUs, no dashboard, on 127.0.0.1); shut down at the end."""
    import ray

    if ray.is_initialized():  # started by someone else: use it, leave its shutdown to them
        yield ray
        return
    from grpo_lambda.compat import ray_bind_localhost

    with ray_bind_localhost() as kwargs:  # a new local cluster on 127.0.0.1, whatever `ray start` recorded
        ray.init(address="local", num_cpus=4, include_dashboard=False, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder (../shared/data beside the repository), or $GRPO_LAMBDA_DATA_DIR."""
    env = os.environ.get(DATA_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(
            f"data folder {path} not found; set {DATA_DIR_ENV} to the folder holding the *.jsonl files"
        )
    return path
