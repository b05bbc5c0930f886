"""Value types of the reward layer: outcomes, one check's request and its result."""

from __future__ import annotations

from dataclasses import dataclass

CORRECT, WRONG, UNPARSABLE, TIMEOUT, ERROR = "correct", "wrong", "unparsable", "timeout", "error"
OUTCOMES = (CORRECT, WRONG, UNPARSABLE, TIMEOUT, ERROR)
"""Every check ends in exactly one of these:

- ``correct``: the extracted answer is equivalent to the gold answer.
- ``wrong``: an answer was extracted and parsed, and it is not equivalent.
- ``unparsable``: no final answer could be found, parsed, or it was rejected as unsafe (too long, nested too
  deeply, python-looking) before any parser saw it; also a ``None`` or non-string response.
- ``timeout``: the check ran past its wall-clock limit (the worker process was interrupted or killed).
- ``error``: the verifier itself failed (an exception, an unparsable *gold* answer, a worker process that
  died twice on the same item); ``VerifyResult.detail`` says what happened.
"""


# The answer markers strict grading reads (reward.strict_format; a prompt template says which one it asks for).
BOXED, HASHES = "boxed", "####"
ANSWER_FORMATS = (BOXED, HASHES)


@dataclass(frozen=True)
class VerifyRequest:
    """One check: grade ``response`` (untrusted model text) against the gold ``answer`` with ``verifier``."""

    response: str | None
    answer: str
    verifier: str = "math"
    correct: float = 1.0
    wrong: float = 0.0
    format_weight: float = 0.0
    math_fallback: str = (
        "none"  # the math verifier, for a response without \boxed{}: none (unparsable) | last_number
    )
    # strict grading (reward.strict_format): the only answer marker read, "boxed" | "####"; None = each
    # verifier's own rules (math: the last box, then math_fallback; gsm8k: ####, box, "answer is", last number)
    answer_format: str | None = None
    # the problem text, for verifiers that check the worked steps against it (chain); None otherwise
    problem: str | None = None


def request_for(prompt, response: str | None, reward, answer_format: str | None) -> VerifyRequest:
    """The check of one response to ``prompt`` (a data ``Prompt``) under ``reward`` (the ``RewardConfig``), as
    training and evaluation both grade it."""
    return VerifyRequest(
        response=response,
        answer=prompt.answer,
        verifier=prompt.verifier,
        correct=reward.correct,
        wrong=reward.wrong,
        format_weight=reward.format_weight,
        math_fallback=reward.math_fallback,
        answer_format=answer_format,
        problem=prompt.problem,
    )


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of one check. ``latency_s`` is the check's own wall time (queueing excluded)."""

    reward: float
    outcome: str
    latency_s: float
    detail: str = ""  # why, for error/timeout/unparsable outcomes; empty otherwise
    where: str = (
        ""  # where the response first fails, from verifiers that can say (chain: step_<i> | answer | format)
    )
