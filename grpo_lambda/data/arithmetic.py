"""Synthetic integer arithmetic ("What is 12 + 7?"): a task a 135M model partly solves, for CPU demos and tests.

Rows have the shape of the JSONL rows (``id``, ``problem``, ``answer`` as a string, ``source``, ``dataset``) plus
``verifier``. Deterministic for a seed; difficulty grows with ``max_operand``, ``num_terms`` and ``*``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

NAMES = ("Tom", "Anna", "Sam", "Lena", "Omar", "Mia", "Ken", "Ines")
ITEMS = ("apples", "marbles", "books", "coins", "stickers", "pencils", "cards", "shells")
# Two-operand word problems; {a} op {b} is the arithmetic they state.
WORD_TEMPLATES = {
    "+": "{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
    "-": "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?",
    "*": "{name} has {a} bags with {b} {item} in each. How many {item} does {name} have in total?",
}
OPS = tuple(WORD_TEMPLATES)  # the operators `ops` may hold
STYLES = ("expression", "word", "mixed")


def evaluate(terms: Sequence[int], ops: Sequence[str]) -> int:
    """Value of ``terms[0] ops[0] terms[1] ...`` with the usual precedence (``*`` before ``+``/``-``)."""
    sums, signs = [terms[0]], []
    for op, t in zip(ops, terms[1:]):
        if op == "*":
            sums[-1] *= t
        else:
            sums.append(t)
            signs.append(op)
    value = sums[0]
    for sign, t in zip(signs, sums[1:]):
        value = value + t if sign == "+" else value - t
    return value


def generate_arithmetic(
    num_rows: int,
    seed: int = 0,
    min_operand: int = 0,
    max_operand: int = 20,
    num_terms: int = 2,
    ops: Sequence[str] = ("+", "-"),
    style: str = "expression",
    allow_negative: bool = False,
    verifier: str = "gsm8k",
    dataset: str = "arithmetic",
) -> list[dict[str, Any]]:
    """``num_rows`` problems; the same arguments always give the same rows.

    style: ``expression`` ("What is 12 + 7?"), ``word`` (two-operand story; falls back to expression for more
    terms) or ``mixed`` (either, at random). Without ``allow_negative`` problems with a negative answer are redrawn.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} must be one of {', '.join(STYLES)}")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops={list(ops)!r} must be a non-empty list of {', '.join(OPS)}")
    rng = random.Random(seed)
    rows = []
    for i in range(num_rows):
        for _ in range(1000):
            terms = [rng.randint(min_operand, max_operand) for _ in range(num_terms)]
            row_ops = [rng.choice(list(ops)) for _ in range(num_terms - 1)]
            value = evaluate(terms, row_ops)
            if allow_negative or value >= 0:
                break
        else:
            raise ValueError(
                "no problem with a non-negative answer in 1000 draws: set allow_negative=true or widen ops"
            )
        word = style == "word" or (style == "mixed" and rng.random() < 0.5)
        if word and num_terms == 2:
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            problem = WORD_TEMPLATES[row_ops[0]].format(name=name, item=item, a=terms[0], b=terms[1])
        else:
            expr = " ".join([str(terms[0])] + [f"{op} {t}" for op, t in zip(row_ops, terms[1:])])
            problem = f"What is {expr}?"
        rows.append(
            {
                "id": f"{dataset}-{seed}-{i:06d}",
                "problem": problem,
                "answer": str(value),
                "source": f"synthetic:arithmetic(seed={seed})",
                "dataset": dataset,
                "verifier": verifier,
            }
        )
    return rows
