"""Data layer: JSONL loading with file:line errors, templates + chat formatting, resume-exact sampler,
synthetic arithmetic, and building a run's rows from the config."""

from __future__ import annotations

import json
import re

import pytest

from grpo_lambda.config import load_config
from grpo_lambda.data import (
    PROMPT_TEMPLATES,
    DataError,
    PromptFormatter,
    PromptSampler,
    build_eval_rows,
    build_train_rows,
    evaluate,
    generate_arithmetic,
    load_jsonl,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A real byte-level BPE tokenizer with a chat template, built offline in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["What is 12 + 7? Please reason step by step, and put your final answer"], trainer=trainer
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- jsonl
def test_load_jsonl_rows(tmp_path):
    path = write_lines(
        tmp_path / "toy.jsonl",
        [
            json.dumps({"id": "a", "problem": "1+1?", "answer": "2", "source": "s", "level": 1}),
            "",
            json.dumps({"problem": "2+2?", "answer": 4}),
        ],
    )
    rows = load_jsonl(path)
    assert [r["id"] for r in rows] == ["a", "toy-3"]
    assert rows[0]["level"] == 1 and rows[0]["dataset"] == "toy"
    assert rows[1]["answer"] == "4" and rows[1]["source"] == "toy"
    assert len(load_jsonl(path, max_rows=1)) == 1


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"id": "x", "problem": "p", "answer": "1"', "invalid JSON (Expecting ',' delimiter at column 42)"),
        ("not json at all", "invalid JSON"),
        ('{"id": "x", "problem": "p", "answer": "1"} trailing', "invalid JSON (Extra data"),
        ('{"id": "x", "answer": "1"}', "field 'problem' is missing"),
        ('{"id": "x", "question": "p", "answer": "1"}', "has 'question': rename it to 'problem'"),
        ('{"id": "x", "problem": "p"}', "field 'answer' is missing"),
        ('{"id": "x", "problem": "p", "solution": "1"}', "has 'solution': rename it to 'answer'"),
        ('{"id": "x", "problem": "", "answer": "1"}', "field 'problem' is empty"),
        ('{"id": "x", "problem": "  \\n", "answer": "1"}', "field 'problem' is empty"),
        ('{"id": "x", "problem": 12, "answer": "1"}', "field 'problem' must be a string, got a JSON number"),
        (
            '{"id": "x", "problem": ["p"], "answer": "1"}',
            "field 'problem' must be a string, got a JSON array",
        ),
        (
            '{"id": "x", "problem": "p", "answer": null}',
            "field 'answer' must be a string or a number, got a JSON null",
        ),
        (
            '{"id": "x", "problem": "p", "answer": true}',
            "field 'answer' must be a string or a number, got a JSON boolean",
        ),
        ('{"id": "x", "problem": "p", "answer": {"v": 1}}', "got a JSON object"),
        ('{"id": "x", "problem": "p", "answer": ""}', "field 'answer' is empty"),
        ('{"id": "x", "problem": "p", "answer": NaN}', "field 'answer' is nan"),
        (
            '{"id": ["x"], "problem": "p", "answer": "1"}',
            "field 'id' must be a non-empty string or an integer",
        ),
        ('{"id": "x", "problem": "p", "answer": "1", "verifier": "maths"}', "field 'verifier' is \"maths\""),
        ('{"id": "x", "problem": "p", "answer": "1", "dataset": 3}', "field 'dataset' must be a string"),
        ('["p", "1"]', "expected a JSON object, got a JSON array"),
        ('"just a string"', "expected a JSON object, got a JSON string"),
        ('{"id": "a", "problem": "p", "answer": "1"}', "duplicate id 'a' (first at line 1)"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, line, fragment):
    good = json.dumps({"id": "a", "problem": "p", "answer": "1"})
    path = write_lines(tmp_path / "bad.jsonl", [good, line, good.replace('"a"', '"b"')])
    with pytest.raises(DataError) as info:
        load_jsonl(path, verifiers=("math", "gsm8k"))
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and "\n" not in message
    assert fragment in message


def test_non_utf8_and_missing_file(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"problem": "ok", "answer": "1"}\n{"problem": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(
        DataError, match=rf"{re.escape(str(path))}:2: not UTF-8 .*re-encode the file as UTF-8"
    ):
        load_jsonl(path)
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'nope.jsonl'))}: no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not a file"):
        load_jsonl(tmp_path)


@pytest.mark.parametrize("content, what", [(b"", "is empty"), (b"\n  \n\t\n", "has only blank lines (3)")])
def test_a_file_without_rows_is_an_error(tmp_path, content, what):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value).startswith(f"{path}:1: no rows: the file {what}")
    assert load_jsonl(path, max_rows=0) == []  # nothing asked for: nothing missing


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"problem": "p", "answer": 2}\r\n{"problem": "q", "answer": "3"}\r\n')
    rows = load_jsonl(path)
    assert [(r["id"], r["problem"], r["answer"]) for r in rows] == [("bom-1", "p", "2"), ("bom-2", "q", "3")]


def test_build_rows_name_the_bad_file_and_line(tmp_path):
    """Through the config: a bad train or eval file is a DataError naming file:line, a bad row verifier too."""
    good = json.dumps({"id": "g", "problem": "1+1?", "answer": "2"})
    write_lines(tmp_path / "train.jsonl", [good, json.dumps({"id": "h", "problem": "2+2?"})])
    write_lines(tmp_path / "eval.jsonl", [good, good, "{oops"])
    write_lines(tmp_path / "ok.jsonl", [good])
    (tmp_path / "empty.jsonl").write_text("")

    def cfg(train, evals):
        return load_config(["data=gsm8k", f"data.data_dir={tmp_path}", f"data.train_files=[{train}]",
                            f"data.eval_files=[{evals}]"])  # fmt: skip

    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'train.jsonl'))}:2: field 'answer'"):
        build_train_rows(cfg("train.jsonl", "ok.jsonl"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'eval.jsonl'))}:2: duplicate id"):
        build_eval_rows(cfg("ok.jsonl", "eval.jsonl"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'empty.jsonl'))}:1: no rows"):
        build_train_rows(cfg("empty.jsonl", "ok.jsonl"))
    write_lines(
        tmp_path / "verifier.jsonl", [json.dumps({"problem": "p", "answer": "1", "verifier": "nope"})]
    )
    with pytest.raises(DataError, match="verifier.jsonl:1: field 'verifier' is \"nope\", not one of"):
        build_train_rows(cfg("verifier.jsonl", "ok.jsonl"))


def test_shared_data_files_load(data_dir):
    rows = load_jsonl(data_dir / "math500.jsonl")
    assert len(rows) == 500 and all(r["problem"] and r["answer"] for r in rows)


# ------------------------------------------------------------------------------------------- templates
def test_templates_substitute_literally():
    problem = r"Find $\frac{1}{2}$ of {x}."
    msgs = PROMPT_TEMPLATES["qwen_math"].messages(problem)
    assert msgs == [
        {
            "role": "user",
            "content": problem + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    sys_msgs = PROMPT_TEMPLATES["qwen_math_system"].messages(problem)
    assert [m["role"] for m in sys_msgs] == ["system", "user"] and sys_msgs[1]["content"] == problem


def test_formatter_applies_chat_template_once(tokenizer):
    fmt = PromptFormatter(tokenizer, "boxed_short", use_chat_template=True, max_prompt_tokens=10_000)
    row = {
        "id": "r1",
        "problem": "What is 12 + 7?",
        "answer": "19",
        "verifier": "gsm8k",
        "dataset": "arithmetic",
    }
    p = fmt(row)
    assert p.text.startswith("<|im_start|>user\nWhat is 12 + 7?") and p.text.endswith(
        "<|im_start|>assistant\n"
    )
    assert p.text.count("<|im_start|>") == 2
    assert tokenizer.decode(p.token_ids) == p.text
    assert (p.id, p.answer, p.verifier, p.dataset) == ("r1", "19", "gsm8k", "arithmetic")
    plain = PromptFormatter(tokenizer, "plain", use_chat_template=False)(row)
    assert plain.text == "What is 12 + 7?\n"


def test_formatter_drops_overlong_prompts(tokenizer):
    rows = [
        {"id": "short", "problem": "1+1?", "answer": "2"},
        {"id": "long", "problem": "1+1? " * 200, "answer": "2"},
    ]
    prompts, dropped = PromptFormatter(tokenizer, "plain", max_prompt_tokens=64).format_rows(rows)
    assert [p.id for p in prompts] == ["short"] and dropped == ["long"]


def test_formatter_without_chat_template_errors(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(DataError, match="use_chat_template=false"):
        PromptFormatter(tok, "qwen_math", use_chat_template=True)


# ------------------------------------------------------------------------------------------- sampler
def test_sampler_resume_is_exact():
    data = list(range(23))  # batches of 5 cross epoch boundaries
    full = PromptSampler(data, prompts_per_step=5, seed=7)
    uninterrupted = [full.next_batch() for _ in range(5)]

    first = PromptSampler(data, prompts_per_step=5, seed=7)
    resumed = [first.next_batch() for _ in range(2)]
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    second = PromptSampler(data, prompts_per_step=5, seed=999)  # the saved seed wins
    second.load_state_dict(state)
    resumed += [second.next_batch() for _ in range(3)]
    assert resumed == uninterrupted


def test_sampler_epochs_are_permutations_and_differ():
    data = list(range(10))
    s = PromptSampler(data, prompts_per_step=5, seed=0)
    epoch0 = s.next_batch() + s.next_batch()
    epoch1 = s.next_batch() + s.next_batch()
    assert sorted(epoch0) == data and sorted(epoch1) == data
    assert epoch0 != epoch1 and epoch0 != data
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["position"] == 0
    assert PromptSampler(data, 5, seed=0).next_batch() == epoch0[:5]  # deterministic for a seed
    assert PromptSampler(data, 5, seed=1).next_batch() != epoch0[:5]


def test_sampler_in_order_and_refill_size():
    s = PromptSampler(list("abcde"), prompts_per_step=2, shuffle=False)
    assert s.next_batch() == ["a", "b"]
    assert s.next_batch(num_prompts=4) == ["c", "d", "e", "a"]  # dynamic-sampling refill, wraps
    assert s.state_dict()["epoch"] == 1


def test_sampler_state_for_other_dataset_rejected():
    state = PromptSampler(list(range(10)), 3).state_dict()
    with pytest.raises(ValueError, match="saved for a dataset of 10 rows but this one has 9"):
        PromptSampler(list(range(9)), 3).load_state_dict(state)
    with pytest.raises(DataError, match="no training prompts"):
        PromptSampler([], 3)


# ------------------------------------------------------------------------------------------- arithmetic
def test_arithmetic_deterministic_and_correct():
    a = generate_arithmetic(300, seed=3, max_operand=50, num_terms=3, ops=["+", "-", "*"], style="mixed")
    assert a == generate_arithmetic(
        300, seed=3, max_operand=50, num_terms=3, ops=["+", "-", "*"], style="mixed"
    )
    assert a != generate_arithmetic(
        300, seed=4, max_operand=50, num_terms=3, ops=["+", "-", "*"], style="mixed"
    )
    assert len({r["id"] for r in a}) == 300
    for row in a:
        expr = re.fullmatch(r"What is (.+)\?", row["problem"]).group(1)
        tokens = expr.split()
        terms, ops = [int(t) for t in tokens[::2]], tokens[1::2]
        assert all(0 <= t <= 50 for t in terms) and len(terms) == 3
        assert int(row["answer"]) == evaluate(terms, ops) >= 0
        assert int(row["answer"]) == _reference_value(expr)


def _reference_value(expr: str) -> int:
    """Independent check of operator precedence: split on + and - outside products."""
    total, sign = 0, 1
    for part in re.split(r"\s*([+-])\s*", expr):
        if part in "+-":
            sign = 1 if part == "+" else -1
            continue
        prod = 1
        for f in part.split("*"):
            prod *= int(f)
        total += sign * prod
    return total


def test_arithmetic_word_problems():
    rows = generate_arithmetic(50, seed=0, style="word", ops=["+", "-"], verifier="math")
    for row in rows:
        nums = [int(n) for n in re.findall(r"\d+", row["problem"])]
        assert len(nums) == 2
        assert int(row["answer"]) in (nums[0] + nums[1], nums[0] - nums[1])
        assert int(row["answer"]) >= 0 and row["verifier"] == "math" and row["dataset"] == "arithmetic"
    assert evaluate([2, 3, 4], ["+", "*"]) == 14 and evaluate([10, 2, 3], ["-", "-"]) == 5


def test_arithmetic_rejects_impossible_settings():
    with pytest.raises(ValueError, match="allow_negative"):
        generate_arithmetic(1, min_operand=5, max_operand=5, num_terms=3, ops=["-"])
    with pytest.raises(ValueError, match="ops"):
        generate_arithmetic(1, ops=["/"])


# ------------------------------------------------------------------------------------------- from config
def test_build_rows_from_config_arithmetic():
    cfg = load_config(["experiment=cpu_tiny_test"])
    train = build_train_rows(cfg)
    evals = build_eval_rows(cfg)
    assert len(train) == 64 and set(evals) == {"arithmetic_eval"} and len(evals["arithmetic_eval"]) == 8
    assert {r["verifier"] for r in train + evals["arithmetic_eval"]} == {"gsm8k"}
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in evals["arithmetic_eval"]})
    assert build_train_rows(cfg) == train  # deterministic


def test_build_rows_from_config_jsonl(tmp_path):
    write_lines(
        tmp_path / "gsm8k_train.jsonl",
        [json.dumps({"id": f"g{i}", "problem": f"{i}+1?", "answer": str(i + 1)}) for i in range(5)],
    )
    write_lines(
        tmp_path / "mine.jsonl",
        [json.dumps({"id": "m", "problem": "x?", "answer": "\\frac{1}{2}", "verifier": "math"})],
    )
    write_lines(
        tmp_path / "math500.jsonl",
        [json.dumps({"id": f"e{i}", "problem": "p", "answer": "1"}) for i in range(4)],
    )
    cfg = load_config(
        [
            "data=gsm8k",
            f"data.data_dir={tmp_path}",
            "data.train_files=[gsm8k_train.jsonl,mine.jsonl]",
            "data.eval_files=[math500.jsonl]",
            "data.max_rows=6",
            "eval.max_prompts_per_dataset=3",
        ]
    )
    train = build_train_rows(cfg)
    assert [r["verifier"] for r in train] == ["gsm8k"] * 5 + ["math"]  # by dataset, then the row's own
    evals = build_eval_rows(cfg)
    assert (
        list(evals) == ["math500"]
        and len(evals["math500"]) == 3
        and evals["math500"][0]["verifier"] == "math"
    )


def test_arithmetic_story_problems_take_several_steps_and_never_go_negative():
    rows = generate_arithmetic(200, seed=5, num_terms=3, max_terms=5, style="story", max_operand=20)
    assert rows == generate_arithmetic(200, seed=5, num_terms=3, max_terms=5, style="story", max_operand=20)
    steps = [row["problem"].count("Then ") for row in rows]
    assert set(steps) == {2, 3, 4}  # 3 to 5 terms: a start amount and 2 to 4 events
    for row in rows:
        assert int(row["answer"]) >= 0 and row["problem"].endswith("have now?")
    # the answer is the story's running total: replay it from the sentences
    import re

    for row in rows[:50]:
        total = int(re.match(r"\w+ has (\d+)", row["problem"]).group(1))
        for verb, b in re.findall(
            r"Then \w+ (gets|finds|buys|is given|gives away|loses|uses|sells) (\d+)", row["problem"]
        ):
            total += int(b) if verb in ("gets", "finds", "buys", "is given") else -int(b)
            assert total >= 0
        assert str(total) == row["answer"]
    with pytest.raises(ValueError, match="story"):
        generate_arithmetic(1, style="story", ops=["+", "*"])
    with pytest.raises(ValueError, match="max_terms"):
        generate_arithmetic(1, num_terms=3, max_terms=2)


def test_arithmetic_eval_seed_fixes_the_held_out_set_across_run_seeds():
    from grpo_lambda.config import load_config
    from grpo_lambda.data.datasets import build_eval_rows

    def eval_set(*overrides):
        cfg = load_config(["experiment=cpu_tiny_test", *overrides], check_files=False)
        return build_eval_rows(cfg)["arithmetic_eval"]

    assert eval_set("trainer.seed=1") != eval_set(
        "trainer.seed=2"
    )  # default: follows data.seed = trainer.seed
    fixed = ["data.arithmetic.eval_seed=7"]
    assert eval_set("trainer.seed=1", *fixed) == eval_set("trainer.seed=2", *fixed)
