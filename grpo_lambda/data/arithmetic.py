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
STYLES = ("expression", "word", "mixed", "story", "chain")
HARD_STEPS = ("first", "last")  # style chain: where the one hard step of the sum stands
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


def chain_terms(
    rng: random.Random, n: int, lo: int, hi: int, easy_max: int, ops: Sequence[str], hard_step: str
) -> tuple[list[int], list[str], list[int], list[str]]:
    """One sum of ``n`` terms with one hard step (two operands from [lo, hi]) and n − 2 easy ones (± 0..easy_max),
    in both orders from the same draws: (terms, ops) with the hard step ``hard_step``, and the other order.

    first: a ± b ± e_1 ... ± e_{n−2}   (the hard step is step 1)
    last:  a ± e_1 ... ± e_{n−2} ± b   (the hard step is the last one); both have the same value."""
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    easy = [rng.randint(0, easy_max) for _ in range(n - 2)]
    hard_op, easy_ops = rng.choice(list(ops)), [rng.choice(list(ops)) for _ in range(n - 2)]
    first = ([a, b, *easy], [hard_op, *easy_ops])
    last = ([a, *easy, b], [*easy_ops, hard_op])
    return (*first, *last) if hard_step == "first" else (*last, *first)


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


def _running(terms: Sequence[int], ops: Sequence[str]) -> list[int]:
    """The running totals of ``terms[0] ops[0] terms[1] ...`` (+ and − only), left to right."""
    totals = [terms[0]]
    for op, t in zip(ops, terms[1:]):
        totals.append(totals[-1] + t if op == "+" else totals[-1] - t)
    return totals


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
    hard_step: str = "first",
    easy_max: int = 2,
) -> list[dict[str, Any]]:
    """``num_rows`` problems; the same arguments always give the same rows. Each has `num_terms` terms, or with
    `max_terms` a number drawn uniformly from [num_terms, max_terms].

    style: ``expression`` ("What is 12 + 7?"), ``word`` (two-operand story; falls back to expression for more
    terms), ``mixed`` (either, at random), ``story`` (a start amount and one sentence per further term, + and −
    only; every running total stays ≥ 0) or ``chain`` (`chain_terms`: one hard step between operands from
    [min_operand, max_operand], placed ``hard_step`` = first or last, the others ± 0..``easy_max``; every running
    total of both orders stays ≥ 0, so the rows of hard_step first and last are the same sums reordered). Without
    ``allow_negative`` problems with a negative answer are redrawn.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} must be one of {', '.join(STYLES)}")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops={list(ops)!r} must be a non-empty list of {', '.join(OPS)}")
    if style == "chain" and hard_step not in HARD_STEPS:
        raise ValueError(f"hard_step={hard_step!r} must be one of {', '.join(HARD_STEPS)}")
    if style == "chain" and easy_max < 0:
        raise ValueError(f"easy_max={easy_max} must be >= 0")
    if style in ("story", "chain") and any(op not in STORY_EVENTS for op in ops):
        raise ValueError(f"style={style!r} takes ops + and - only, got {list(ops)!r}")
    rng = random.Random(seed)
    rows = []
    if max_terms is not None and max_terms < num_terms:
        raise ValueError(f"max_terms={max_terms} must be >= num_terms={num_terms} (or None)")
    for i in range(num_rows):
        n = num_terms if max_terms is None else rng.randint(num_terms, max_terms)
        for _ in range(1000):
            if style == "chain":
                terms, row_ops, *other = chain_terms(
                    rng, n, min_operand, max_operand, easy_max, ops, hard_step
                )
                value = evaluate(terms, row_ops)
                if allow_negative or min(_running(terms, row_ops) + _running(*other)) >= 0:
                    break
                continue
            terms = [rng.randint(min_operand, max_operand) for _ in range(n)]
            row_ops = [rng.choice(list(ops)) for _ in range(n - 1)]
            value = evaluate(terms, row_ops)
            if style == "story":  # nobody gives away more than they have: every running total >= 0
                if min(_running(terms, row_ops)) >= 0:
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
