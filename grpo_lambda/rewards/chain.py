"""The chained-sum verifier: a response is correct only when every worked step and the final answer are.

For a problem "What is 37 + 48 - 1?" the steps are the running totals, left to right, and the answer follows
them::

    Step 1: 37 + 48 = 85
    Step 2: 85 - 1 = 84
    Answer: \\boxed{84}

The response's equations ``a ± b = c`` (any text around them, e.g. "Step 1:") must be exactly the problem's chain:
as many as the problem has operators, step i reads (running total before i) op_i term_{i+1} = (running total
after i). Exactly one ``\\boxed{}``, after the last step, holding the problem's value. Outcomes: ``unparsable``
when the response has no box or no equation, ``wrong`` for any other difference, else ``correct``. The verifier
reads the problem (``VerifyRequest.problem``): an answer without its steps, or with steps of another sum, is wrong.
It also says where a response first fails (``VerifyResult.where``): ``format`` (unparsable), ``step_<i>`` (the
first step that is not the problem's, missing or extra), ``answer`` (right steps, wrong or misplaced box) — the
study's check of where the decisive tokens are (``verifier/first_error/*`` metrics).
"""

from __future__ import annotations

import re

from grpo_lambda.rewards.extract import AnswerRejected, as_number, last_boxed_span, response_tail
from grpo_lambda.rewards.spec import CORRECT, UNPARSABLE, WRONG

_PROBLEM = re.compile(r"What is\s+(-?\d+(?:\s*[+\-]\s*\d+)+)\s*\?")
_TERM = re.compile(r"([+\-])\s*(\d+)")
_EQUATION = re.compile(r"(-?\d+)\s*([+\-])\s*(\d+)\s*=\s*(-?\d+)")


class ProblemError(ValueError):
    """The problem is not a chained sum ("What is 7 + 2 - 5?"): a data error, not a model error."""


def expected_chain(problem: str) -> list[tuple[int, str, int, int]]:
    """The steps (left, op, right, result) of the sum in ``problem``, left to right (+ and − only)."""
    match = _PROBLEM.search(problem) if isinstance(problem, str) else None
    if match is None:
        raise ProblemError(f"chain verifier: {str(problem)[:200]!r} is not a sum of the form 'What is 7 + 2 - 5?' "
                           "(the verifier reads the problem from VerifyRequest.problem)")  # fmt: skip
    expr = re.sub(r"\s+", "", match.group(1))
    first = re.match(r"-?\d+", expr)
    total, steps = int(first.group(0)), []
    for op, term in _TERM.findall(expr[first.end() :]):
        result = total + int(term) if op == "+" else total - int(term)
        steps.append((total, op, int(term), result))
        total = result
    return steps


def verify_chain(response: object, answer: str, problem: str) -> tuple[float, str, str]:
    """Grade a chained-sum response (module doc): ``(1.0, "correct", "")`` or ``(0.0, outcome, where)``."""
    steps = expected_chain(problem)
    if not steps or steps[-1][3] != as_number(answer):
        raise ProblemError(f"chain verifier: gold answer {answer!r} is not the value of {problem[:200]!r}")
    if not isinstance(response, str):
        return 0.0, UNPARSABLE, "format"
    text = response_tail(response)
    try:
        box = last_boxed_span(text)
    except AnswerRejected:
        return 0.0, UNPARSABLE, "format"
    equations = list(_EQUATION.finditer(text))
    if box is None or not equations:
        return 0.0, UNPARSABLE, "format"
    written = [(int(a), op, int(b), int(c)) for a, op, b, c in (m.groups() for m in equations)]
    if written != steps:
        first = next(
            (i for i, (w, s) in enumerate(zip(written, steps)) if w != s), min(len(written), len(steps))
        )
        return 0.0, WRONG, f"step_{first + 1}"
    ok = (
        as_number(text[box[1] : box[2]].strip()) == steps[-1][3]
        and text.count("\\boxed") + text.count("\\fbox") == 1
        and box[0] >= equations[-1].end()
    )
    return (1.0, CORRECT, "") if ok else (0.0, WRONG, "answer")
