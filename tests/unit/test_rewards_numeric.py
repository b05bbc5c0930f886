"""The numeric shortcuts in front of math-verify: the LaTeX arithmetic evaluator and the sound
"definitely different" test on parsed answers."""

from __future__ import annotations

import math

import pytest

from grpo_lambda.rewards import verify_math
from grpo_lambda.rewards.arith import evaluate_latex
from grpo_lambda.rewards.equivalence import parse_latex, values_verdict
from grpo_lambda.rewards.numeric import definitely_different


@pytest.mark.parametrize(
    "text, value",
    [
        (r"2\sqrt{5}", 2 * math.sqrt(5)),
        (r"-\frac{\sqrt{3}}{2}", -math.sqrt(3) / 2),
        (r"\frac{\pi}{4}", math.pi / 4),
        (r"3^{10}-1", 59048.0),
        (r"\sqrt[3]{27}", 3.0),
        (r"\left(\frac{3}{4}\right)^{2}", 0.5625),
        ("-2^2", -4.0),
        ("2(3+1)", 8.0),
        (r"2 \cdot 3 \times 4 \div 6", 4.0),
        (r"\dfrac{22}{7}", 22 / 7),
        (r"50^\circ", 50.0),
        (".5", 0.5),
    ],
)
def test_evaluate_latex_values(text, value):
    assert evaluate_latex(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize(
    "text",
    [
        r"2\frac{1}{3}",  # a mixed number to math-verify (7/3), a product to a naive parser
        "1 000",
        "x+1",
        r"\pi r^2",
        "e^2",
        "12!",
        r"\sqrt{-1}",
        "1/0",
        r"(-8)^{1/3}",
        r"9^{9^{9}}",  # exponent far beyond the cap: not computed
        "10^{400}",  # overflows a float
        "1, 2",
        r"\infty",
        "",
    ],
)
def test_evaluate_latex_declines(text):
    assert evaluate_latex(text) is None


def test_values_verdict():
    assert values_verdict(0.5, 0.5, approximate=False) is True
    assert values_verdict(0.5, 0.6, approximate=False) is False
    assert values_verdict(2.0**-98, 2.0**-98, approximate=False) is None  # tiny: floats cannot tell, defer
    assert values_verdict(1 / 3, 0.333333, approximate=True) is True
    assert values_verdict(1 / 3, 0.3333, approximate=True) is False
    assert values_verdict(0.0, 0.0, approximate=False) is True


def parsed(answer: str):
    return parse_latex(answer)[0]


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("(x+1)^2", "x^2+2x+2"),
        (r"\frac{\pi}{2}", r"\frac{\pi}{3}"),
        ("(1, 5)", "(1, 6)"),
        ("(1, 2]", "(1, 2)"),
        (r"\{1, 2\}", r"\{1, 3\}"),
        (r"\{1, 2\}", r"\{1, 2, 3\}"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}"),
        ("x^2+1", "y^2+1"),
        (r"\frac{1}{2^{98}}", r"\frac{2}{2^{98}}"),  # math-verify's chop calls these equal
    ],
)
def test_definitely_different(gold, pred):
    assert definitely_different(parsed(gold), parsed(pred))


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("(x+1)^2", "x^2+2x+1"),  # equal: left to math-verify
        (r"\{1, 2\}", r"\{2, 1\}"),
        ("y = 2x + 3", "y = 2x + 4"),  # equations: not handled here
        (r"\text{Monday}", r"\text{Tuesday}"),  # text-like symbols: math-verify's own rules
        ("(1, 2)", r"\{1, 3\}"),  # different kinds of object
    ],
)
def test_not_definitely_different(gold, pred):
    assert not definitely_different(parsed(gold), parsed(pred))


def test_math_verify_false_positives_are_vetoed():
    assert verify_math(r"\boxed{4.89 \times 10^{-10}}", "3.89e-10") == (0.0, "wrong")
    assert verify_math(r"\boxed{\frac{2}{2^{98}}}", r"\frac{1}{2^{98}}") == (0.0, "wrong")
    assert verify_math(r"\boxed{2^{-98}}", r"\frac{1}{2^{98}}") == (1.0, "correct")
