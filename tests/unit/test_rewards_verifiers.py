"""Verifiers (math via math-verify, gsm8k, format), reward specs, registry and outcome metrics; in-process."""

from __future__ import annotations

import pytest

from grpo_lambda.rewards import (
    OUTCOMES,
    VerifyRequest,
    VerifyResult,
    check,
    format_reward,
    get_verifier,
    outcome_metrics,
    verify_gsm8k,
    verify_math,
)


def boxed(answer: str) -> str:
    return f"Some reasoning first. Putting it together, the answer is $\\boxed{{{answer}}}$."


EQUIVALENT = [
    # fractions and decimals
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac12", r"\frac{1}{2}"),
    ("1/2", r"\frac{1}{2}"),
    ("0.333333", r"\frac{1}{3}"),
    ("1.60", "1.6"),
    ("27.0", "27"),
    ("1,080", "1080"),
    (r"4.5 \times 10^{33}", "4.5e33"),
    # LaTeX expressions
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    (r"\frac{\pi}{2} + 2007", r"2007 + \frac\pi 2"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    # sets, intervals, tuples
    (r"\{2, 1\}", r"\{1,2\}"),
    ("1, 2, 3", "3,2,1"),
    ("(1, 2]", "(1,2]"),
    (r"(-\infty, 0) \cup \{1\}", r"(-\infty, 0) \cup\{1\}."),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    # text answers, percentages, units, degrees, equations, bases
    ("Monday", r"\text{Monday}"),
    (r"\text{(C)}", r"\text{(C)}"),
    (r"62.5\%", "62.5%"),
    ("62.5", r"62.5\%"),
    ("0.625", r"62.5\%"),
    (r"10 \text{ cm}", "10"),
    (r"864 \mbox{ inches}^2", "864"),
    (r"30^\circ", "30"),
    ("x = 3", "3"),
    ("y=2x+3", "y = 3 + 2x"),
    ("2516_8", "2516_8"),
    ("2516", "2516_8"),
    (r"\$32,\!348", r"\$32,\!348"),
    ("32348", r"\$32,\!348"),
]

NOT_EQUIVALENT = [
    ("0.3333", r"\frac{1}{3}"),
    ("28", "27"),
    (r"\frac{1}{3}", r"\frac{1}{2}"),
    ("[1, 2]", "(1,2]"),
    ("(2, 1)", "(1,2)"),
    (r"\{1, 2\}", r"\{1,2,3\}"),
    ("x^2+2x", "(x+1)^2"),
    ("2516_7", "2516_8"),
    ("2517", "2516_8"),
    ("Tuesday", r"\text{Monday}"),
    ("0.62", r"62.5\%"),
    ("x = 4", "3"),
]


@pytest.mark.parametrize("pred, gold", EQUIVALENT)
def test_math_equivalent_forms_are_correct(pred, gold):
    assert verify_math(boxed(pred), gold) == (1.0, "correct")


@pytest.mark.parametrize("pred, gold", NOT_EQUIVALENT)
def test_math_different_answers_are_wrong(pred, gold):
    assert verify_math(boxed(pred), gold) == (0.0, "wrong")


@pytest.mark.parametrize(
    "response, strict, with_fallback",
    [
        (
            r"Reasoning \boxed{1} ... on second thought \boxed{\frac{1}{2}}",
            "correct",
            "correct",
        ),  # last box wins
        (r"\boxed{\frac{1}{2}} ... no wait, \boxed{1}", "wrong", "wrong"),
        ("So the final answer is $\\frac{1}{2}$.", "unparsable", "correct"),  # no box: "answer is" (fallback)
        ("Half of it: 0.5", "unparsable", "correct"),  # no box, no phrase: the last number (fallback)
        ("I do not know.", "unparsable", "unparsable"),
        ("", "unparsable", "unparsable"),
        (None, "unparsable", "unparsable"),
        (12, "unparsable", "unparsable"),
        (r"\boxed{}", "unparsable", "unparsable"),
        (
            r"\boxed{\frac{1}{",
            "unparsable",
            "unparsable",
        ),  # truncated: box never closes, nothing else to read
        (r"\boxed{)(}", "unparsable", "unparsable"),
    ],
)
def test_math_extraction_and_outcomes(response, strict, with_fallback):
    """Only a boxed answer counts by default (the authors' grading); fallback="last_number" also reads an unboxed
    response's "answer is ..." or last number."""
    for fallback, expected in (("none", strict), ("last_number", with_fallback)):
        reward, outcome = verify_math(response, r"\frac{1}{2}", fallback=fallback)
        assert outcome == expected, fallback
        assert reward == (1.0 if expected == "correct" else 0.0)
    assert verify_math(response, r"\frac{1}{2}") == verify_math(response, r"\frac{1}{2}", fallback="none")


@pytest.mark.parametrize(
    "response, outcome",
    [
        ("16 - 3 - 4 = 9 eggs; 9 * 2 = 18.\n#### 18", "correct"),
        ("#### $18.00", "correct"),
        (r"She makes \boxed{\$18} a day.", "correct"),
        (r"\boxed{18 \text{ dollars}}", "correct"),
        ("The answer is 18 dollars.", "correct"),
        ("so she makes 9 * 2 = 18", "correct"),
        ("#### 19", "wrong"),
        ("#### 18.5", "wrong"),
        ("no numbers at all", "unparsable"),
        (None, "unparsable"),
    ],
)
def test_gsm8k(response, outcome):
    assert verify_gsm8k(response, "18")[1] == outcome
    assert verify_gsm8k("#### 1,080", "1080") == (1.0, "correct")


def test_format_reward():
    assert format_reward(r"so \boxed{3}") == 1.0
    assert format_reward(r"so \boxed{}") == 0.0
    assert format_reward("so 3") == 0.0
    assert format_reward(None) == 0.0
    assert format_reward(r"\boxed{" + "{" * 100) == 0.0


def test_check_applies_the_reward_values():
    def request(response):
        return VerifyRequest(
            response, r"\frac12", verifier="math", correct=2.0, wrong=-1.0, format_weight=0.5
        )

    good = check(request(r"\boxed{0.5}"))
    assert (good.reward, good.outcome, good.detail) == (2.5, "correct", "")
    wrong_but_formatted = check(request(r"\boxed{7}"))
    assert (wrong_but_formatted.reward, wrong_but_formatted.outcome) == (-0.5, "wrong")
    unformatted = check(request("the answer is 7"))
    assert (unformatted.reward, unformatted.outcome) == (
        -1.0,
        "unparsable",
    )  # no box: unparsable, reward = wrong
    lenient = check(
        VerifyRequest("the answer is 7", r"\frac12", math_fallback="last_number", correct=2.0, wrong=-1.0)
    )
    assert (lenient.reward, lenient.outcome) == (-1.0, "wrong")
    assert check(VerifyRequest("so 7", "7", math_fallback="last_number")).outcome == "correct"
    assert check(VerifyRequest("so 7", "7")).outcome == "unparsable"
    assert (
        check(VerifyRequest("so 7", "7", verifier="gsm8k")).outcome == "correct"
    )  # GSM8K keeps its own rule
    assert good.latency_s >= 0.0


def test_unparsable_gold_is_an_error_with_detail_not_a_wrong():
    result = check(VerifyRequest(r"\boxed{3}", "np.arcsin(10/13)"))
    assert result.outcome == "error" and "gold answer" in result.detail
    assert check(VerifyRequest(r"\boxed{3}", None)).outcome == "error"  # type: ignore[arg-type]
    assert check(VerifyRequest(r"\boxed{3}", "")).outcome == "error"
    assert check(VerifyRequest("#### 3", "three", verifier="gsm8k")).outcome == "error"
    # the same gold still grades its own spelling correct (string fast path)
    assert check(VerifyRequest(r"\boxed{np.arcsin(10/13)}", "np.arcsin(10/13)")).outcome == "correct"


def test_registry():
    assert get_verifier("math") is verify_math
    with pytest.raises(ValueError, match="registered verifiers: chain, format, gsm8k, math"):
        get_verifier("maths")
    assert check(VerifyRequest("x", "1", verifier="nope")).outcome == "error"


def test_outcome_metrics_names_and_values():
    results = [
        VerifyResult(1.0, "correct", 0.001),
        VerifyResult(0.0, "wrong", 0.002),
        VerifyResult(0.0, "timeout", 5.0, "slow"),
        VerifyResult(1.0, "correct", 0.003),
    ]
    m = outcome_metrics(results, wall_s=2.0)
    assert {f"verifier/{o}_rate" for o in OUTCOMES} <= m.keys()
    assert m["verifier/correct_rate"] == 0.5 and m["verifier/timeout_rate"] == 0.25
    assert m["verifier/error_rate"] == 0.0 and m["verifier/unparsable_rate"] == 0.0
    assert m["verifier/latency_p50_s"] == 0.002 and m["verifier/latency_p99_s"] == 5.0
    assert m["verifier/checks_per_s"] == 2.0 and m["verifier/reward_mean"] == 0.5
    assert outcome_metrics([])["verifier/correct_rate"] == 0.0
