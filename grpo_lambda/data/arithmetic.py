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
STYLES = ("expression", "word", "mixed", "story")
# Story problems: a start amount, then one event per further term, in order (+ and − only).
STORY_EVENTS = {
    "+": ("gets {b} more", "finds {b} more", "buys {b} more", "is given {b} more"),
    "-": ("gives away {b}", "loses {b}", "uses {b}", "sells {b}"),
}


def story_problem(rng: random.Random, terms: Sequence[int], ops: Sequence[str]) -> str:
    """ "Anna has 12 coins. Then she finds 7 more. Then she loses 5. How many coins does Anna have now?" —
    one sentence per step, so a worked answer takes several steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    events = [rng.choice(STORY_EVENTS[op]).format(b=t) for op, t in zip(ops, terms[1:])]
    steps = " ".join(f"Then {name} {e}." for e in events)
    return f"{name} has {terms[0]} {item}. {steps} How many {item} does {name} have now?"


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
    max_terms: int | None = None,
    style: str = "expression",
    allow_negative: bool = False,
    verifier: str = "gsm8k",
    dataset: str = "arithmetic",
) -> list[dict[str, Any]]:
    """``num_rows`` problems; the same arguments always give the same rows. Each has `num_terms` terms, or with
    `max_terms` a number drawn uniformly from [num_terms, max_terms].

    style: ``expression`` ("What is 12 + 7?"), ``word`` (two-operand story; falls back to expression for more
    terms), ``mixed`` (either, at random) or ``story`` (a start amount and one sentence per further term, + and −
    only; every running total stays ≥ 0). Without ``allow_negative`` problems with a negative answer are redrawn.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} must be one of {', '.join(STYLES)}")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops={list(ops)!r} must be a non-empty list of {', '.join(OPS)}")
    if style == "story" and any(op not in STORY_EVENTS for op in ops):
        raise ValueError(f"style='story' takes ops + and - only, got {list(ops)!r}")
    rng = random.Random(seed)
    rows = []
    if max_terms is not None and max_terms < num_terms:
        raise ValueError(f"max_terms={max_terms} must be >= num_terms={num_terms} (or None)")
    for i in range(num_rows):
        n = num_terms if max_terms is None else rng.randint(num_terms, max_terms)
        for _ in range(1000):
            terms = [rng.randint(min_operand, max_operand) for _ in range(n)]
            row_ops = [rng.choice(list(ops)) for _ in range(n - 1)]
            value = evaluate(terms, row_ops)
            if style == "story":  # nobody gives away more than they have: every running total >= 0
                totals = [evaluate(terms[: j + 1], row_ops[:j]) for j in range(n)]
                if min(totals) >= 0:
                    break
            elif allow_negative or value >= 0:
                break
        else:
            raise ValueError(
                "no problem with a non-negative answer in 1000 draws: set allow_negative=true or widen ops"
            )
        word = style == "word" or (style == "mixed" and rng.random() < 0.5)
        if style == "story":
            problem = story_problem(rng, terms, row_ops)
        elif word and n == 2:
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
