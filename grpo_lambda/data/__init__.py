"""Datasets (JSONL, synthetic arithmetic), prompt templates and the resume-exact prompt sampler."""

from grpo_lambda.data.arithmetic import evaluate, generate_arithmetic
from grpo_lambda.data.datasets import build_eval_rows, build_train_rows, verifier_for
from grpo_lambda.data.jsonl import DataError, load_jsonl
from grpo_lambda.data.sampler import PromptSampler
from grpo_lambda.data.templates import PROMPT_TEMPLATES, Prompt, PromptFormatter, PromptTemplate, get_template

__all__ = [
    "PROMPT_TEMPLATES",
    "DataError",
    "Prompt",
    "PromptFormatter",
    "PromptSampler",
    "PromptTemplate",
    "build_eval_rows",
    "build_train_rows",
    "evaluate",
    "generate_arithmetic",
    "get_template",
    "load_jsonl",
    "verifier_for",
]
