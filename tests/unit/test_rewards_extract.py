"""Answer extraction and normal forms (grpo_lambda.rewards.extract): pure string code."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from grpo_lambda.rewards.extract import (
    MAX_ANSWER_CHARS,
    MAX_BRACE_DEPTH,
    AnswerRejected,
    answer_phrase,
    as_base_digits,
    as_integer,
    as_number,
    check_answer_size,
    gsm8k_marker,
    last_boxed,
    last_number,
    normalize_answer,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\fbox{42}", "42"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)} done", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{}", ""),
        ("no box here", None),
        (r"truncated \boxed{\frac{1}{2", None),
        (r"\boxed", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_rejects_deep_and_long_without_reading_everything():
    deep = r"\boxed{" + "{" * (MAX_BRACE_DEPTH + 1) + "1" + "}" * (MAX_BRACE_DEPTH + 1) + "}"
    with pytest.raises(AnswerRejected, match="deeper"):
        last_boxed(deep)
    with pytest.raises(AnswerRejected, match="longer"):
        last_boxed(r"\boxed{" + "1" * (MAX_ANSWER_CHARS + 10) + "}")
    # an unclosed box followed by megabytes is rejected after MAX_ANSWER_CHARS, not scanned to the end
    huge = r"\boxed{" + "x" * 5_000_000
    start = time.perf_counter()
    with pytest.raises(AnswerRejected):
        last_boxed(huge)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"Thus the final answer is $\frac{1}{2}$. I hope it is correct.", r"\frac{1}{2}"),
        ("Answer: 42.", "42"),
        ("the answer is 3.5, since ...", "3.5"),
        (r"The answer is $\$32,\!348$.", r"\$32,\!348"),
        ("nothing to see", None),
    ],
)
def test_answer_phrase(text, expected):
    assert answer_phrase(text) == expected


def test_last_number_and_gsm8k_marker():
    assert last_number("she pays $1,234.50 for 3 apples, total 1,234.5") == "1,234.5"
    assert last_number("no digits") is None
    assert last_number("it is -7.") == "-7"
    assert gsm8k_marker("reasoning\n#### 1,080\n") == "1,080"
    assert gsm8k_marker("no marker") is None


def test_check_answer_size():
    assert check_answer_size("  x+1 ") == "x+1"
    with pytest.raises(AnswerRejected):
        check_answer_size("(" * (MAX_BRACE_DEPTH + 1))
    with pytest.raises(AnswerRejected):
        check_answer_size("1" * (MAX_ANSWER_CHARS + 1))


def test_normal_forms():
    assert normalize_answer(r"\left( 3, \dfrac{\pi}{2} \right)") == normalize_answer(r"(3,\frac{\pi}{2})")
    assert normalize_answer(r"\text{Monday}") == "Monday"
    assert normalize_answer("5.") == "5"
    assert as_integer("1,080") == 1080 and as_integer("-7") == -7 and as_integer("1,2") is None
    assert as_number("0.5") == Fraction(1, 2)
    assert as_number(r"-\frac{3}{4}") == Fraction(-3, 4)
    assert as_number("-3./2") == Fraction(-3, 2)
    assert as_number("4.5e33") == Fraction(45 * 10**32)
    assert as_number(r"4.5 \times 10^{-3}") == Fraction(45, 10**4)
    assert as_number("1/0") is None and as_number("x") is None and as_number("1,2") is None
    assert as_base_digits("2516_8") == ("2516", 8)
    assert as_base_digits(r"\text{1a}_{16}") == ("1A", 16)
    assert as_base_digits("19_8") is None  # 9 is not an octal digit
    assert as_base_digits("E_{2}") is None
