"""Verifiers: pure functions ``verify(response, answer) -> (reward, outcome)`` and their string registry.

``verify_math``: extract the final answer (the last ``\\boxed{}``, as the GRPO-λ authors grade; with
``fallback="last_number"`` also "the answer is ...", else the last number, for an unboxed response), clean it
and reject unsafe strings (``equivalence.prepare_answer``), decide exact forms on a fast path
(normal-form string equality, base-b numerals, exact or relative-tolerance number equality) and only then ask
math-verify (``equivalence.equivalent``: fractions, LaTeX, sets, intervals, tuples, equations, text answers).
``verify_gsm8k``: exact numeric equality. ``verify_chain`` (rewards/chain.py): every worked step of a chained sum
and its answer (it reads the problem, ``VerifyRequest.problem``). ``format_reward``: a closed, non-empty ``\\boxed{}``.
Strict grading (``answer_format``, from ``reward.strict_format``): only the marker the prompt asked for is read.
A verifier raises only for a bad *gold* answer; ``check`` turns any exception into outcome ``error``.
They have no timeout of their own: run them through ``VerifierPool`` / ``SubprocessWorkers``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from fractions import Fraction

from grpo_lambda.rewards.arith import evaluate_latex
from grpo_lambda.rewards.chain import verify_chain
from grpo_lambda.rewards.equivalence import (
    GoldAnswerError,
    equivalent,
    has_percent,
    numbers_equal,
    prepare_answer,
    prepare_gold,
    values_verdict,
)
from grpo_lambda.rewards.extract import (
    AnswerRejected,
    answer_phrase,
    as_base_digits,
    as_number,
    gsm8k_marker,
    last_boxed,
    last_number,
    normalize_answer,
    response_tail,
)
from grpo_lambda.rewards.spec import (
    ANSWER_FORMATS,
    BOXED,
    CORRECT,
    ERROR,
    UNPARSABLE,
    WRONG,
    VerifyRequest,
    VerifyResult,
)

__all__ = [
    "GoldAnswerError",
    "VERIFIERS",
    "answer_verifier",
    "check",
    "extract_answer",
    "format_reward",
    "get_verifier",
    "verify_format",
    "verify_gsm8k",
    "verify_math",
]

Verifier = Callable[..., tuple]  # (score, outcome) or (score, outcome, where the response first fails)
MATH_FALLBACKS = ("none", "last_number")  # the math verifier's answer for a response without \boxed{}
_ASSIGNMENT_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)")


def extract_math_answer(response: str, fallback: str = "none") -> str | None:
    """The final answer of a MATH-style response: the last ``\\boxed{}``. Without any box: none (the authors'
    grading), or with ``fallback="last_number"`` the text after "answer is" / "Answer:", else the last number.
    A last box that is empty or never closes (cut off mid-answer) means no answer: no fallback is tried."""
    if fallback not in MATH_FALLBACKS:
        raise ValueError(f"math fallback {fallback!r} is not one of {', '.join(MATH_FALLBACKS)}")
    text = response_tail(response)
    boxed = last_boxed(text)
    if boxed is not None or "\\boxed" in text or "\\fbox" in text:
        return boxed.strip() or None if boxed is not None else None
    return (answer_phrase(text) or last_number(text)) if fallback == "last_number" else None


def extract_marked(response: str, answer_format: str) -> str | None:
    """Strict extraction: the last ``\\boxed{}`` (``boxed``) or the text after the last ``#### `` (``####``), and
    nothing else — "She has 18 apples left." has no answer. An empty or unclosed marker is no answer either."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer format {answer_format!r} is not one of {', '.join(ANSWER_FORMATS)}")
    text = response_tail(response)
    found = last_boxed(text) if answer_format == BOXED else gsm8k_marker(text)
    return found.strip() or None if found is not None else None


def _extractor(answer_format: str | None, lenient):
    """The strict extractor of ``answer_format``, or the verifier's own ``lenient`` one when it is None."""
    return lenient if answer_format is None else (lambda text: extract_marked(text, answer_format))


def _extract_prepared(response: object, extract) -> tuple[str, str] | None:
    """(extracted answer, its prepared form) of a string response; None when it is not a string, has no answer
    or the answer is rejected (too long, too deeply nested)."""
    if not isinstance(response, str):
        return None
    try:
        extracted = extract(response)
        return None if extracted is None else (extracted, prepare_answer(extracted))
    except AnswerRejected:
        return None


def verify_math(
    response: object, answer: str, fallback: str = "none", answer_format: str | None = None
) -> tuple[float, str]:
    """Grade a MATH-style response against a gold answer: ``(1.0, "correct")`` or ``(0.0, outcome)``.

    An unboxed response is ``unparsable`` unless ``fallback="last_number"`` (see ``extract_math_answer``);
    ``answer_format`` (strict grading) reads only that marker (``extract_marked``) and ignores ``fallback``."""
    gold = prepare_gold(answer)
    found = _extract_prepared(
        response, _extractor(answer_format, lambda text: extract_math_answer(text, fallback))
    )
    if found is None or not found[1]:
        return 0.0, UNPARSABLE
    extracted, pred = found
    assignment = _ASSIGNMENT_RE.fullmatch(pred)
    if assignment and "=" not in gold:  # "x = 5" answers "5" (as math-verify reads it)
        pred = assignment.group(1)
    # Fast path: exact forms decide without sympy.
    if normalize_answer(pred) == normalize_answer(gold):
        return 1.0, CORRECT
    gold_base = as_base_digits(gold)
    if gold_base is not None:  # "2516_8": same digits (the base may be left out); sympy would drop "_8"
        pred_base = as_base_digits(pred)
        same = pred_base == gold_base if pred_base else normalize_answer(pred).upper() == gold_base[0]
        return (1.0, CORRECT) if same else (0.0, WRONG)
    gold_num, pred_num = as_number(gold), as_number(pred)
    if gold_num is not None and pred_num is not None:
        approximate = "." in gold or "." in pred
        equal = numbers_equal(gold_num, pred_num, approximate)
        if not equal and has_percent(answer) != has_percent(extracted):  # 10\% is 10 and also 0.1
            scale = Fraction(1, 100) if has_percent(answer) else Fraction(100)
            equal = numbers_equal(gold_num * scale, pred_num, approximate=True)
        return (1.0, CORRECT) if equal else (0.0, WRONG)
    gold_value, pred_value = evaluate_latex(gold), evaluate_latex(pred)
    if gold_value is not None and pred_value is not None:  # 2\sqrt{5} vs \sqrt{20}: no sympy needed
        verdict = values_verdict(gold_value, pred_value, approximate="." in gold or "." in pred)
        if verdict is not None:
            return (1.0, CORRECT) if verdict else (0.0, WRONG)
    equal = equivalent(gold, pred)
    if equal is None:
        return 0.0, UNPARSABLE
    return (1.0, CORRECT) if equal else (0.0, WRONG)


def extract_gsm8k_answer(response: str) -> str | None:
    """The final answer of a GSM8K response: ``#### x``, else ``\\boxed{}``, else "answer is", else last number."""
    text = response_tail(response)
    for extractor in (gsm8k_marker, last_boxed, answer_phrase, last_number):
        found = extractor(text)
        if found is not None and found.strip():
            return found
    return None


def verify_gsm8k(response: object, answer: str, answer_format: str | None = None) -> tuple[float, str]:
    """Exact numeric grading (GSM8K): the extracted number must equal the gold number (``18.00`` = ``18``).
    The answer is ``extract_gsm8k_answer``'s (``####``, boxed, "answer is", last number), or with ``answer_format``
    only that marker's."""
    gold = as_number(prepare_gold(answer))
    if gold is None:
        raise GoldAnswerError(f"gsm8k gold answer {str(answer)[:200]!r} is not a number")
    found = _extract_prepared(response, _extractor(answer_format, extract_gsm8k_answer))
    if found is None:
        return 0.0, UNPARSABLE
    pred = found[1]
    value = as_number(pred)
    if value is None:  # "\$1,080 dollars", "5 x 3 = 15": the last number in the answer
        last = last_number(pred)
        value = as_number(last) if last is not None else None
    if value is None:
        return 0.0, UNPARSABLE
    return (1.0, CORRECT) if value == gold else (0.0, WRONG)


def extract_answer(
    response: object, verifier: str = "math", fallback: str = "none", answer_format: str | None = None
) -> str | None:
    """The final answer `verifier` would grade in `response` (string handling only, no sympy: safe to call in
    the driver), for evaluation records and majority votes; None when there is none or it is rejected."""
    if not isinstance(response, str):
        return None
    extract = {
        "math": _extractor(answer_format, lambda text: extract_math_answer(text, fallback)),
        "gsm8k": _extractor(answer_format, extract_gsm8k_answer),
        "format": lambda text: last_boxed(response_tail(text)),
        "chain": lambda text: last_boxed(response_tail(text)),  # verify_chain reads the box only
    }.get(verifier)
    if extract is None:
        get_verifier(verifier)  # raises, naming the registered verifiers
    try:
        found = extract(response)
    except AnswerRejected:
        return None
    return found.strip() or None if found is not None else None


def format_reward(response: object) -> float:
    """1.0 if the response ends its reasoning with a complete, non-empty ``\\boxed{...}``, else 0.0."""
    if not isinstance(response, str):
        return 0.0
    try:
        boxed = last_boxed(response_tail(response))
    except AnswerRejected:
        return 0.0
    return 1.0 if boxed is not None and boxed.strip() else 0.0


def verify_format(response: object, answer: str) -> tuple[float, str]:
    """Format-only verifier (ignores the gold answer): ``correct`` when ``format_reward`` is 1."""
    return (1.0, CORRECT) if format_reward(response) == 1.0 else (0.0, WRONG)


VERIFIERS: dict[str, Verifier] = {
    "math": verify_math,
    "gsm8k": verify_gsm8k,
    "format": verify_format,
    "chain": verify_chain,
}


def answer_verifier(name: str) -> str:
    """The verifier that decides whether two *final answers* of ``name``'s responses are equal (majority votes):
    chained sums' answers are numbers (``gsm8k``), every other verifier compares its own answers."""
    return "gsm8k" if name == "chain" else name


def get_verifier(name: str) -> Verifier:
    """The verifier registered under ``name``; a ``ValueError`` listing the registered names otherwise."""
    try:
        return VERIFIERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown verifier {name!r}; registered verifiers: {', '.join(sorted(VERIFIERS))} "
            "(set reward.verifier / the 'verifier' field to one of them)"
        ) from None


def check(request: VerifyRequest) -> VerifyResult:
    """Run one request's verifier and apply its reward spec. Never raises ``Exception``: failures are ``error``.

    reward = wrong + (correct − wrong)·score + format_weight·format_reward(response)
    """
    start = time.perf_counter()
    try:
        verifier = get_verifier(request.verifier)
        options = {"fallback": request.math_fallback} if verifier is verify_math else {}
        if verifier in (verify_math, verify_gsm8k):
            options["answer_format"] = request.answer_format
        if verifier is verify_chain:  # the steps are checked against the problem's sum
            options["problem"] = request.problem
        score, outcome, *where = verifier(request.response, request.answer, **options)
        reward = request.wrong + (request.correct - request.wrong) * score
        if request.format_weight:
            reward += request.format_weight * format_reward(request.response)
        return VerifyResult(float(reward), outcome, time.perf_counter() - start, where="".join(where))
    except Exception as e:  # reported, never swallowed: outcome "error" with the exception in `detail`
        detail = f"{type(e).__name__}: {e}"[:500]
        return VerifyResult(float(request.wrong), ERROR, time.perf_counter() - start, detail)
