"""Answer equivalence: cleaning answers and asking math-verify, safely and fast.

Safety: model text is never executed. Only math-verify's LaTeX extraction is used (``LatexExtractionConfig``;
never ``ExprExtractionConfig``, whose plain-expression path calls ``sympy.parse_expr``, i.e. ``eval``). LaTeX is
parsed by latex2sympy's ANTLR grammar into sympy objects; the one ``sympify`` on that path is
``sympy.Number(token)`` on a lexer NUMBER token (digits only). Before any of that, ``prepare_answer`` caps an
answer's length and nesting and rejects python-looking strings (``__``, ``import``, ``lambda`` not preceded by
``\\`` ...). ``tests/unit/test_rewards_safety.py`` spies on sympy's ``eval_expr`` to check it.

No timeouts here: math-verify's signal-based timeouts are turned off (``parsing_timeout=None``,
``timeout_seconds=None``) because they break off the main thread and turn a timeout into a silent ``False``.
``SubprocessWorkers`` enforces a hard wall-clock limit per check instead.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

from grpo_lambda.rewards.extract import AnswerRejected, check_answer_size

REL_TOL = Fraction(1, 10**6)  # relative tolerance of "equal" numbers when one is written as a decimal


class GoldAnswerError(ValueError):
    """The gold answer itself cannot be read (data problem, not a model problem): outcome ``error``."""


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its own timeout is off; the pool's hard wall-clock limit replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


# ------------------------------------------------------------------------------------------------ safety
_PYTHONISH_RE = re.compile(
    r"__|(?<![\\A-Za-z])(?:import|lambda|exec|eval|getattr|setattr|globals|locals|compile|subprocess)(?![A-Za-z])"
)
_APPROX_RE = re.compile(r"^(?:\\approx|\\sim|\\simeq)\s*")
_PHANTOM_RE = re.compile(r"\\phantom\s*(?:\{[^{}]*\}|-)")
_FRAC_SHORT_RE = re.compile(r"\\([dt]?frac)\s*(\\[A-Za-z]+|[0-9A-Za-z])\s*(\\[A-Za-z]+|[0-9A-Za-z])")
# A trailing unit in \text{}/\mbox{} after a value: "\text{ cm}", "\mbox{ square feet}^2", "\text{dollars}".
_TEXT_UNIT_RE = re.compile(
    r"(?<=[0-9A-Za-z}.)])\s*(?:\\[,;: ]\s*)*\\(?:text|mbox|textnormal|textrm)\s*"
    r"\{(?:\s+[A-Za-z][A-Za-z. ]*|[A-Za-z]{2,}[A-Za-z. ]*)\}(?:\^\{?[23]\}?)?\s*$"
)
_PERCENT_RE = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\}|\s+percent)\s*$")


def has_percent(answer: str) -> bool:
    """Whether ``answer`` ends in a percent sign (``\\%``, ``%``, "percent")."""
    return bool(_PERCENT_RE.search(answer.strip().rstrip(".,").replace("$", "").rstrip()))


def prepare_answer(answer: str) -> str:
    """A size-checked, cleaned answer string for comparison: ``$``/``\\$`` and ``\\!`` dropped, one trailing
    period and a trailing percent sign removed (applied to gold and prediction alike, so ``62.5\\%`` ≡ ``62.5``).

    Raises ``AnswerRejected`` if it is too long, too deeply nested or looks like python code.
    """
    s = check_answer_size(answer)
    if _PYTHONISH_RE.search(s):
        raise AnswerRejected("answer looks like python code")
    s = s.replace(",\\!", "").replace("{,}", "")  # thousands separators: 29,\!322 and 29{,}322
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").strip()
    s = _APPROX_RE.sub("", s)
    s = _PHANTOM_RE.sub("", s)
    s = _FRAC_SHORT_RE.sub(r"\\\1{\2}{\3}", s)  # \frac\pi 2 -> \frac{\pi}{2}
    s = _PERCENT_RE.sub("", s.rstrip(".,").rstrip())
    s = _TEXT_UNIT_RE.sub("", s)  # "10\text{ cm}^2" -> "10"; a lone "\text{Monday}" stays
    return s.strip()


# ------------------------------------------------------------------------------------------- math-verify
@lru_cache(maxsize=1)
def _latex_configs() -> tuple:
    """math-verify's LaTeX extraction, first without its unit stripping, which eats trailing letters that look
    like units (``6m`` -> ``6``, ``\\frac{1}{m} t`` -> ``1/m``, ``a + b + c`` -> ``a +``); ``\\text{...}`` units
    are removed by ``prepare_answer`` instead. With unit stripping only when that parse fails."""
    from math_verify import LatexExtractionConfig
    from math_verify.parser import NormalizationConfig

    def config(units: bool) -> tuple:
        normalization = NormalizationConfig(
            basic_latex=True, units=units, malformed_operators=True, nits=True, boxed="all", equations=False
        )
        return (LatexExtractionConfig(boxed_match_priority=0, normalization_config=normalization),)

    return config(units=False), config(units=True)


@lru_cache(maxsize=8192)
def parse_latex(answer: str) -> tuple:
    """math-verify's sympy parse of one prepared answer (as ``\\boxed{answer}``), () if it does not parse.

    Cached per process: the G samples of a prompt often repeat an answer, and the gold is parsed once.
    """
    from math_verify import parse

    for config in _latex_configs():
        parsed = parse(
            "\\boxed{" + answer + "}",
            extraction_config=config,
            fallback_mode="no_fallback",
            extraction_mode="first_match",
            parsing_timeout=None,
            raise_on_error=True,
        )
        if parsed:
            return tuple(parsed)
    return ()


def parse_gold(gold: str) -> tuple:
    """math-verify's parse of a prepared gold answer; ``GoldAnswerError`` (a data problem) if there is none."""
    parsed = parse_latex(gold)
    if not parsed:
        raise GoldAnswerError(f"gold answer {gold[:200]!r} cannot be parsed by math-verify; fix the data row")
    return parsed


def equivalent(gold: str, pred: str) -> bool | None:
    """math-verify equivalence of two prepared answers; None when ``pred`` does not parse."""
    from math_verify import verify

    from grpo_lambda.rewards.numeric import definitely_different  # imports sympy: only in worker processes

    gold_parsed = parse_gold(gold)
    pred_parsed = parse_latex(pred)
    if not pred_parsed:
        return None
    if definitely_different(gold_parsed[0], pred_parsed[0]):
        return False  # differ numerically: no need for math-verify's (slow) symbolic simplification
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None, raise_on_error=False))


# Answers in the shapes models write (fractions, roots, pi, intervals, tuples, sets, matrices, equations ...).
# Parsing them once in the zygote fills the ANTLR parser's prediction cache, which every forked child then
# inherits: a shape's first parse takes 50-300 ms, later ones 1-20 ms.
WARM_UP_ANSWERS = (
    r"\frac{1}{2}",
    r"-\frac{3}{4}",
    r"\dfrac{14}{3}",
    r"\frac{\sqrt{3}}{2}",
    r"2\sqrt{5}",
    r"\sqrt[3]{2}",
    r"3\sqrt{7}-1",
    r"\frac{\pi}{4}",
    r"3\pi",
    r"\pi^2",
    r"e^{2}",
    r"\log_2 8",
    r"\ln 2",
    r"\sin x",
    r"\cos^2 x",
    r"\tan \theta",
    r"x^2+2x+1",
    r"(x+1)^2",
    r"\frac{x+1}{x-1}",
    r"2x - 3y + 4z = 5",
    r"y = 2x + 3",
    r"x = 5",
    r"x \in [-2, 7]",
    r"(1, 2]",
    r"[1, 2)",
    r"(-\infty, 0) \cup (1, \infty)",
    r"\{1, 2, 3\}",
    r"1, 2, 3",
    r"\left( 3, \frac{\pi}{2} \right)",
    r"\left( \frac{3}{2}, -13 \right)",
    r"\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]",
    r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
    r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
    r"50^\circ",
    r"\text{Monday}",
    r"\text{(C)}",
    r"2^{10}",
    r"10!",
    r"\binom{5}{2}",
    r"|x|",
    r"\lfloor x \rfloor",
    r"a_1 + a_{n+1}",
    r"3 + 4i",
    r"\infty",
    r"x \le 3",
    r"2 < x < 5",
    r"4.5 \times 10^{33}",
    r"0.\overline{3}",
    r"\frac{a}{b}",
)


def warm_up(parser: bool = True) -> None:
    """Import math-verify and run each kind of comparison once (~1 s); with ``parser``, also parse
    ``WARM_UP_ANSWERS`` (~3 s more). A process forked afterwards starts warm (the zygote calls this)."""
    for answer in WARM_UP_ANSWERS if parser else ():
        parse_latex(answer)
    for gold, pred in [
        (r"\frac{1}{2}", "0.5"), ("(1,2]", r"\{1, 2\}"), ("x=3", "3"), ("x^{2}+1", "1+x^2"),
        ("y = 2x + 3", "2x - y = -3"), (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}"),
        (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}"),
    ]:  # fmt: skip
        equivalent(gold, pred)


def numbers_equal(gold: Fraction, pred: Fraction, approximate: bool) -> bool:
    """Two plain numbers: exactly equal, or when one was written as a decimal (``approximate``) within a
    relative ``REL_TOL`` (``1/3`` = ``0.333333``, ``3.89e-10`` != ``4.89e-10``)."""
    if approximate:
        return abs(gold - pred) <= REL_TOL * max(abs(gold), abs(pred))
    return gold == pred


def values_verdict(gold: float, pred: float, approximate: bool) -> bool | None:
    """Equal / different / undecided (None) for the float values of two constant expressions.

    ``approximate`` (a decimal on either side): the ``numbers_equal`` rule, relative ``REL_TOL``. Otherwise
    different beyond 1e-9 relative; equal within 1e-12 only for magnitudes in [1e-6, 1e12] (floats cannot tell
    ``1/2^98`` from ``1/(2^98+1)``); math-verify decides the rest.
    """
    difference, scale = abs(gold - pred), max(abs(gold), abs(pred))
    if approximate:
        return difference <= float(REL_TOL) * scale
    if difference > 1e-9 * scale:
        return False
    if scale == 0.0 or (difference <= 1e-12 * scale and 1e-6 <= scale <= 1e12):
        return True
    return None


def prepare_gold(answer: object) -> str:
    """``prepare_answer`` for a gold answer; a bad gold is a ``GoldAnswerError`` (a data problem)."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise GoldAnswerError(f"gold answer must be a string, got {type(answer).__name__}")
    try:
        gold = prepare_answer(str(answer))
    except AnswerRejected as e:
        raise GoldAnswerError(f"gold answer {str(answer)[:200]!r} rejected: {e}") from e
    if not gold:
        raise GoldAnswerError("gold answer is empty")
    return gold
