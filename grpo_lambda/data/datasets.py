"""Build the training and evaluation rows a run uses, from ``cfg.data`` and ``cfg.reward``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo_lambda.data.arithmetic import generate_arithmetic
from grpo_lambda.data.jsonl import load_jsonl

if TYPE_CHECKING:
    from grpo_lambda.config import Config

ARITHMETIC_EVAL_SEED_OFFSET = 1_000_003  # the eval set is drawn with seed + this offset


def verifier_for(row: dict[str, Any], cfg: Config) -> str:
    """The row's own ``verifier``, else ``reward.verifier_by_dataset[row's dataset]``, else ``reward.verifier``."""
    return row.get("verifier") or cfg.reward.verifier_by_dataset.get(
        row.get("dataset", ""), cfg.reward.verifier
    )


def _data_path(cfg: Config, name: str) -> Path:
    from grpo_lambda.config import default_data_dir, resolve_data_file

    return resolve_data_file(name, cfg.data.data_dir or default_data_dir())


def _load(cfg: Config, name: str, max_rows: int | None = None) -> list[dict[str, Any]]:
    """A data file's rows (`load_jsonl`: a DataError naming file:line for anything malformed), each with the
    verifier it is graded by; a row's own ``verifier`` must be a registered one."""
    from grpo_lambda.rewards.verifiers import VERIFIERS

    rows = load_jsonl(_data_path(cfg, name), max_rows=max_rows, verifiers=VERIFIERS)
    for row in rows:
        row["verifier"] = verifier_for(row, cfg)
    return rows


def _arith(cfg: Config, num_rows: int, seed: int, dataset: str) -> list[dict[str, Any]]:
    a = cfg.data.arithmetic
    return generate_arithmetic(
        num_rows,
        seed=seed,
        min_operand=a.min_operand,
        max_operand=a.max_operand,
        num_terms=a.num_terms,
        max_terms=a.max_terms,
        ops=a.ops,
        style=a.style,
        allow_negative=a.allow_negative,
        hard_step=a.hard_step,
        easy_max=a.easy_max,
        verifier=verifier_for({"dataset": "arithmetic"}, cfg),  # train and eval sets alike
        dataset=dataset,
    )


def build_train_rows(cfg: Config) -> list[dict[str, Any]]:
    """Training rows (``id, problem, answer, source, dataset, verifier``), in file order, at most data.max_rows."""
    d = cfg.data
    if d.source == "arithmetic":
        rows = _arith(cfg, d.arithmetic.num_rows, d.seed, "arithmetic")
    else:
        rows = [row for name in d.train_files for row in _load(cfg, name)]
        seen: set[str] = set()
        for row in rows:  # ids must be unique across files too (they key rewards and logs)
            if row["id"] in seen:
                row["id"] = f"{row['dataset']}/{row['id']}"
            seen.add(row["id"])
    return rows[: d.max_rows] if d.max_rows is not None else rows


def dataset_file(name: str) -> str:
    """An eval dataset's file: ``gsm8k_test`` -> ``gsm8k_test.jsonl`` (names with a suffix are kept)."""
    return name if Path(name).suffix else f"{name}.jsonl"


def build_eval_rows(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """Eval sets by name (file stem, or ``arithmetic_eval``), each at most eval.max_prompts_per_dataset rows:
    ``eval.datasets`` if given, else ``data.eval_files`` (plus the arithmetic eval set for data=arithmetic)."""
    d, cap = cfg.data, cfg.eval.max_prompts_per_dataset
    sets: dict[str, list[dict[str, Any]]] = {}
    if cfg.eval.datasets:
        for name in cfg.eval.datasets:
            sets[Path(name).stem] = _load(cfg, dataset_file(name), max_rows=cap)
        return sets
    for name in d.eval_files:
        sets[Path(name).stem] = _load(cfg, name, max_rows=cap)
    if d.source == "arithmetic" and d.arithmetic.eval_rows > 0:
        n = d.arithmetic.eval_rows if cap is None else min(cap, d.arithmetic.eval_rows)
        seed = (
            d.arithmetic.eval_seed
            if d.arithmetic.eval_seed is not None
            else d.seed + ARITHMETIC_EVAL_SEED_OFFSET
        )
        sets["arithmetic_eval"] = _arith(cfg, n, seed, "arithmetic_eval")
    return sets
