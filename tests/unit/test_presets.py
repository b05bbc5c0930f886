"""The paper presets as the authors ran them: `paper_authors_code` is the launch script as written (every field
named with its source), paper presets grade strictly (the prompt's answer marker only) and evaluate with a ~3k
response budget; strict grading itself, in the verifiers and the grading CLI."""

from __future__ import annotations

import json

import pytest

from grpo_lambda.config import ConfigError, load_config
from grpo_lambda.data.templates import PROMPT_TEMPLATES, answer_format
from grpo_lambda.grade import main as grade_main
from grpo_lambda.launch import engine_positions
from grpo_lambda.rewards import VerifyRequest
from grpo_lambda.rewards.verifiers import check, extract_answer, verify_gsm8k, verify_math

PRESETS = ["paper_qwen1.5b_gsm8k", "paper_qwen1.5b_math12k", "paper_r1distill1.5b_gsm8k",
           "paper_r1distill1.5b_math12k", "paper_r1distill7b_math12k", "paper_authors_code"]  # fmt: skip


def preset(name, *overrides):
    return load_config([f"experiment={name}", "model.path=/models/stand-in", *overrides], check_files=False)


# The authors' launch script (run_*_grpo_lora.sh in their fork of veRL), each value with the script override it
# comes from, or the fork's default where the script leaves the key unset (as read in issues #9 and #22).
AUTHORS_SCRIPT = {
    "model.max_response_tokens": (3072, "script: data.max_response_length=3072"),
    "data.train_files": (["math_train_12k.jsonl"], "script: data.train_files=<MATH-12k>"),
    "data.shuffle": (False, "script: data.shuffle=False"),
    "trainer.eval_before_train": (False, "script: trainer.val_before_train=False"),
    "trainer.total_steps": (
        15 * (12000 // 64),
        "script: trainer.total_epochs=15, veRL drops the partial batch",
    ),
    "algorithm.trace_anchor": ("horizon", "fork default code path: use_batch_max_for_trace"),
    "algorithm.trace_floor": (1e-7, "fork: the floor on off-diagonal trace weights"),
    "algorithm.trace_style": ("recent", "script sets no style: the fork's default"),
    "algorithm.neg_adv_clamp": (-1000.0, "script sets no adv_clamp: the fork's default"),
    "algorithm.lam": (0.99, "script / paper: λ = 0.99"),
    "data.prompts_per_step": (64, "script: data.train_batch_size=64"),
    "rollout.samples_per_prompt": (8, "script: actor_rollout_ref.rollout.n=8"),
}


@pytest.mark.parametrize("key", sorted(AUTHORS_SCRIPT))
def test_paper_authors_code_is_the_script_as_written(key):
    expected, source = AUTHORS_SCRIPT[key]
    section, name = key.split(".")
    assert getattr(getattr(preset("paper_authors_code"), section), name) == expected, source


def test_the_authors_clamp_never_binds():
    """-1000 is the fork's 'no clamp': a group-normalised advantage of G = 8 rewards is at least −(G−1)/√G."""
    import torch

    from grpo_lambda.algorithms import compute_advantages

    rewards = torch.tensor([1.0] * 7 + [0.0])  # the most negative advantage G = 8 can give
    clamped = compute_advantages(rewards, 8, neg_clamp=-1000.0)
    assert torch.equal(clamped, compute_advantages(rewards, 8, neg_clamp=None))
    assert clamped.min().item() == pytest.approx(-7 / 8**0.5, rel=1e-4)


def test_the_paper_text_presets_keep_the_paper():
    a = preset("paper_qwen1.5b_math12k").algorithm
    assert (a.trace_anchor, a.trace_style, a.neg_adv_clamp) == ("token", "both", -0.1)
    assert preset("paper_qwen1.5b_math12k").data.shuffle is True


@pytest.mark.parametrize("name", PRESETS)
def test_paper_presets_grade_strictly_and_evaluate_at_3k(name):
    cfg = preset(name)
    assert cfg.reward.strict_format and cfg.reward.math_fallback == "none"
    assert (
        answer_format(cfg.data.prompt_template, cfg.reward.strict_format) == "boxed"
    )  # their prompt's marker
    assert cfg.eval.max_response_tokens == 3072
    assert engine_positions(cfg) == cfg.model.max_prompt_tokens + 3072  # the engines serve the eval budget
    assert engine_positions(
        preset(name, "trainer.eval_every_steps=0", "trainer.eval_before_train=false")
    ) == (cfg.model.max_prompt_tokens + cfg.model.max_response_tokens)


def test_other_runs_grade_leniently_by_default():
    cfg = load_config()  # the CPU demo
    assert not cfg.reward.strict_format
    assert answer_format(cfg.data.prompt_template, cfg.reward.strict_format) is None


# ---------------------------------------------------------------- strict grading
@pytest.mark.parametrize(
    "response, lenient, boxed, hashes",
    [
        ("She has 18 apples left.", "correct", "unparsable", "unparsable"),
        ("The answer is 18.", "correct", "unparsable", "unparsable"),
        (r"So she has \boxed{18} apples.", "correct", "correct", "unparsable"),
        ("9 * 2 = 18\n#### 18", "correct", "unparsable", "correct"),
        (r"\boxed{17} and #### 18", "correct", "wrong", "correct"),
        (r"cut off: \boxed{18", "correct", "unparsable", "unparsable"),
    ],
)
def test_gsm8k_strict_reads_only_the_prompts_marker(response, lenient, boxed, hashes):
    assert verify_gsm8k(response, "18")[1] == lenient
    assert verify_gsm8k(response, "18", answer_format="boxed")[1] == boxed
    assert verify_gsm8k(response, "18", answer_format="####")[1] == hashes
    for fmt, outcome in ((None, lenient), ("boxed", boxed), ("####", hashes)):
        assert check(VerifyRequest(response, "18", verifier="gsm8k", answer_format=fmt)).outcome == outcome


def test_math_strict_ignores_the_fallback():
    text = r"Thus the answer is \frac{1}{2}."
    assert verify_math(text, r"\frac12", fallback="last_number")[1] == "correct"
    assert verify_math(text, r"\frac12", fallback="last_number", answer_format="boxed")[1] == "unparsable"
    assert verify_math(r"#### \frac{1}{2}", r"\frac12", answer_format="####")[1] == "correct"
    assert extract_answer("She has 18 apples left.", "gsm8k") == "18"
    assert extract_answer("She has 18 apples left.", "gsm8k", answer_format="boxed") is None


def test_strict_grading_needs_a_marker_and_no_fallback():
    with pytest.raises(ConfigError, match="'plain' does not"):
        load_config(["reward.strict_format=true", "data.prompt_template=plain"])
    with pytest.raises(
        ConfigError, match="reward.math_fallback='last_number' must be none with reward.strict"
    ):
        load_config(["reward.strict_format=true", "reward.math_fallback=last_number"])
    cfg = load_config(["reward.strict_format=true", "data.prompt_template=gsm8k"])  # veRL's GSM8K prompt
    assert answer_format(cfg.data.prompt_template, True) == "####"
    assert {t.answer_marker for t in PROMPT_TEMPLATES.values()} == {"boxed", "####", None}


def test_grading_cli_answer_format(tmp_path, capsys):
    src, dst = tmp_path / "gen.jsonl", tmp_path / "graded.jsonl"
    rows = [{"response": "She has 18 apples left.", "answer": "18", "verifier": "gsm8k"},
            {"response": r"\boxed{18}", "answer": "18", "verifier": "gsm8k"}]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert grade_main([str(src), str(dst), "--workers", "1"]) == 0
    assert [json.loads(line)["outcome"] for line in dst.read_text().splitlines()] == ["correct", "correct"]
    assert grade_main([str(src), str(dst), "--workers", "1", "--answer-format", "boxed"]) == 0
    assert [json.loads(line)["outcome"] for line in dst.read_text().splitlines()] == ["unparsable", "correct"]
    with pytest.raises(SystemExit):
        grade_main([str(src), str(dst), "--answer-format", "boxed", "--math-fallback", "last_number"])
    assert "cannot be combined" in capsys.readouterr().err
