"""The chained-sum task of the second study: the `chain` verifier (every step and the answer), the `chain` data
style (one hard step first or last, the same sums) and the few-shot `chain` template."""

from __future__ import annotations

import pytest

from grpo_lambda.data.arithmetic import generate_arithmetic
from grpo_lambda.data.templates import CHAIN_SHOTS, get_template
from grpo_lambda.rewards import VerifierPool, VerifyRequest, check, outcome_metrics
from grpo_lambda.rewards.chain import ProblemError, expected_chain, verify_chain
from grpo_lambda.rewards.verifiers import answer_verifier, extract_answer

PROBLEM = "What is 7 + 2 - 5 + 3?"
STEPS = "Step 1: 7 + 2 = 9. So far: 9.\nStep 2: 9 - 5 = 4. So far: 4.\nStep 3: 4 + 3 = 7. So far: 7."
RESPONSE = f"{STEPS}\nAnswer: \\boxed{{7}}"


def test_expected_chain_is_the_running_totals_and_ends_at_the_generated_answer():
    assert expected_chain(PROBLEM) == [(7, "+", 2, 9), (9, "-", 5, 4), (4, "+", 3, 7)]
    rows = generate_arithmetic(300, seed=3, num_terms=2, max_terms=5, max_operand=30, allow_negative=True)
    for row in rows:
        terms = row["problem"].removeprefix("What is ").removesuffix("?").split()
        total = int(terms[0])  # a loop over the written expression, left to right (+ and − only)
        for op, t in zip(terms[1::2], terms[2::2]):
            total = total + int(t) if op == "+" else total - int(t)
        steps = expected_chain(row["problem"])
        assert len(steps) == len(terms) // 2 and steps[-1][3] == total == int(row["answer"])
        assert all(s[0] == prev[3] for prev, s in zip(steps, steps[1:]))


@pytest.mark.parametrize(
    ("response", "outcome", "where"),
    [
        (RESPONSE, "correct", ""),
        ("7 + 2 = 9\n9 - 5 = 4\n4 + 3 = 7\n\\boxed{7}", "correct", ""),  # labels and "So far" are not graded
        (
            RESPONSE.replace("9 - 5 = 4", "9 - 5 = 3").replace("4 + 3", "3 + 4"),
            "wrong",
            "step_2",
        ),  # a wrong step
        ("Step 1: 7 + 2 - 5 + 3 = 7\nAnswer: \\boxed{7}", "wrong", "step_1"),  # the whole sum in one line
        ("Step 1: 0 + 7 = 7\nAnswer: \\boxed{7}", "wrong", "step_1"),  # a chain that is not the problem's
        (RESPONSE.replace("Step 3: 4 + 3 = 7. So far: 7.\n", ""), "wrong", "step_3"),  # a step missing
        (f"{STEPS}\nStep 4: 7 + 0 = 7\nAnswer: \\boxed{{7}}", "wrong", "step_4"),  # a step too many
        (RESPONSE.replace("{7}", "{8}"), "wrong", "answer"),  # right steps, wrong answer
        (f"Answer: \\boxed{{7}}\n{STEPS}", "wrong", "answer"),  # the answer before the steps
        (f"\\boxed{{7}} {RESPONSE}", "wrong", "answer"),  # two boxes
        (f"{STEPS}\nAnswer: 7", "unparsable", "format"),  # no box
        ("Answer: \\boxed{7}", "unparsable", "format"),  # no steps
        (f"{STEPS}\nAnswer: \\boxed{{7", "unparsable", "format"),  # cut off inside the box
        (None, "unparsable", "format"),
    ],
)
def test_every_step_and_the_answer_and_where_it_first_fails(response, outcome, where):
    assert verify_chain(response, "7", PROBLEM) == (1.0 if outcome == "correct" else 0.0, outcome, where)
    result = check(VerifyRequest(response=response, answer="7", verifier="chain", problem=PROBLEM))
    assert (result.outcome, result.where) == (outcome, where)


def test_negative_running_totals():
    response = "3 - 8 = -5\n-5 + 2 = -3\n\\boxed{-3}"
    assert verify_chain(response, "-3", "What is 3 - 8 + 2?") == (1.0, "correct", "")


def test_a_bad_gold_or_a_missing_problem_is_an_error_that_says_so():
    with pytest.raises(ProblemError, match="not the value"):
        verify_chain(RESPONSE, "8", PROBLEM)
    with pytest.raises(ProblemError, match="not a sum"):
        verify_chain(RESPONSE, "7", "How many apples?")
    result = check(VerifyRequest(response=RESPONSE, answer="7", verifier="chain"))  # no problem given
    assert result.outcome == "error" and "VerifyRequest.problem" in result.detail


def test_the_pool_passes_the_problem_to_the_subprocess_and_answers_compare_as_numbers():
    requests = [VerifyRequest(response=r, answer="7", verifier="chain", problem=PROBLEM)
                for r in (RESPONSE, RESPONSE.replace("{7}", "{8}"))]  # fmt: skip
    with VerifierPool(num_workers=1, timeout_s=20.0, use_ray=False, warm_parser=False) as pool:
        results = pool.score(requests)
    assert [(r.outcome, r.where) for r in results] == [("correct", ""), ("wrong", "answer")]
    metrics = outcome_metrics(results)
    assert metrics["verifier/first_error/answer_rate"] == 0.5 and metrics["verifier/correct_rate"] == 0.5
    assert not any("first_error" in k for k in outcome_metrics(results[:1]))  # nothing failed: no places
    assert extract_answer(RESPONSE, "chain") == "7"
    assert (
        extract_answer(f"{STEPS}\nAnswer: 7", "chain") is None
    )  # what the verifier reads: the box, nothing else
    assert answer_verifier("chain") == "gsm8k" and answer_verifier("math") == "math"


def test_the_worked_examples_are_what_the_verifier_grades_and_sit_in_earlier_turns():
    for problem, response in CHAIN_SHOTS:
        assert verify_chain(response, extract_answer(response, "chain"), problem) == (1.0, "correct", "")
    messages = get_template("chain").messages("What is 4 + 5 + 1?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == CHAIN_SHOTS[0][1] and messages[-1]["content"].startswith(
        "What is 4 + 5 + 1?"
    )
    plain = get_template("chain").plain_text("What is 4 + 5 + 1?")
    assert plain.index(CHAIN_SHOTS[1][1]) < plain.index("What is 4 + 5 + 1?")


@pytest.mark.parametrize("n", [3, 4, 5])
def test_chain_style_gives_the_same_sums_with_the_hard_step_first_or_last(n):
    kw = dict(seed=11, style="chain", num_terms=n, min_operand=2, max_operand=9, easy_max=1)
    first = generate_arithmetic(200, hard_step="first", **kw)
    last = generate_arithmetic(200, hard_step="last", **kw)
    for f, la in zip(first, last):
        sf, sl = expected_chain(f["problem"]), expected_chain(la["problem"])
        assert f["answer"] == la["answer"] == str(sf[-1][3]) == str(sl[-1][3])
        hard_f, hard_l = sf[0][2], sl[-1][2]  # the hard operand: step 1's right term, or the last step's
        assert 2 <= sf[0][0] <= 9 and 2 <= hard_f <= 9 and hard_f == hard_l and sf[0][1] == sl[-1][1]
        assert all(s[2] <= 1 for s in sf[1:]) and all(s[2] <= 1 for s in sl[:-1])  # the easy steps: ± 0..1
        assert min(s[3] for s in sf + sl) >= 0  # no negative running total in either order
        assert sorted(f["problem"][:-1].split()) == sorted(
            la["problem"][:-1].split()
        )  # the same terms and ops
    with pytest.raises(ValueError, match="hard_step"):
        generate_arithmetic(1, style="chain", hard_step="middle")
    with pytest.raises(ValueError, match="ops"):
        generate_arithmetic(1, style="chain", ops=["*"])
