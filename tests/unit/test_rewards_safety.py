"""No model text is ever executed: sympy's eval never sees it, and python-looking answers are rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy.parsing.sympy_parser as sympy_parser

from grpo_lambda.rewards import verify_gsm8k, verify_math

MARKER = "pwnmarker"


def payloads(target: Path) -> list[str]:
    code = f"__import__('os').system('touch {target}')"
    return [
        rf"\boxed{{{code}}}",
        f"The final answer is {code}.",
        f"The final answer is ${code}$.",
        rf"\boxed{{{MARKER}+1}}",
        rf"\boxed{{\frac{{{MARKER}}}{{2}}}}",
        rf"\boxed{{\text{{{MARKER}}}}}",
        rf"\boxed{{(lambda: {MARKER})()}}",
        rf"\boxed{{\operatorname{{{MARKER}}}(1)}}",
        rf"\boxed{{x_{{{MARKER}}}}}",
        rf"\boxed{{eval('{MARKER}')}}",
        f"Answer: 1+{MARKER}*2",
        f"{MARKER} 2**{MARKER}",
    ]


@pytest.fixture
def eval_calls(monkeypatch) -> list[str]:
    """Every code string sympy's parser hands to ``eval`` while the test runs."""
    calls: list[str] = []
    real_eval_expr = sympy_parser.eval_expr

    def spy(code, local_dict, global_dict):
        calls.append(code)
        return real_eval_expr(code, local_dict, global_dict)

    monkeypatch.setattr(sympy_parser, "eval_expr", spy)
    return calls


def test_model_text_never_reaches_eval(tmp_path, eval_calls):
    target = tmp_path / "pwned"
    for response in payloads(target):
        for gold in ("3", r"\frac{1}{2}", "x+1", r"\{1, 2\}"):
            verify_math(response, gold)
            verify_gsm8k(response, "3")
    assert not target.exists()
    leaked = [code for code in eval_calls if MARKER in code or "import" in code or "system" in code]
    assert leaked == []


def test_eval_spy_would_see_a_direct_sympify(eval_calls):
    """The spy above can fail: a sympify of a raw string does reach eval (so never do that)."""
    sympy_parser.parse_expr(f"{MARKER} + 1")
    assert any(MARKER in code for code in eval_calls)


@pytest.mark.parametrize(
    "answer",
    [
        "__import__('os')",
        "lambda: 1",
        "eval(1)",
        "().__class__",
        "import os",
    ],
)
def test_python_looking_answers_are_unparsable(answer):
    assert verify_math(rf"\boxed{{{answer}}}", "1") == (0.0, "unparsable")


def test_latex_lambda_and_words_containing_keywords_still_parse():
    assert verify_math(r"\boxed{\lambda = 2}", "2") == (1.0, "correct")
    assert verify_math(r"\boxed{\text{evaluated}}", r"\text{evaluated}") == (1.0, "correct")
