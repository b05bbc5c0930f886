"""The grading CLI: python -m grpo_lambda.grade IN.jsonl OUT.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grpo_lambda.grade import main

ROWS = [
    {
        "id": "a",
        "response": r"So the answer is $\boxed{\frac{3}{4}}$.",
        "answer": r"\frac34",
        "verifier": "math",
    },
    {"id": "b", "response": "16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18", "answer": "18", "verifier": "gsm8k"},
    {"id": "c", "response": r"\boxed{0.75}", "answer": "0.7"},  # no verifier: --verifier (math)
    {"id": "d", "response": None, "answer": 2, "meta": {"k": [1, 2]}},
    {"id": "e", "response": "日本語 \\boxed{x^2+1} \ud800", "answer": "1+x^{2}"},
    {"id": "f", "response": r"\boxed{9^{9^{9^{9}}}}", "answer": "3"},
]


def write_jsonl(path, rows, blank_line_after=None):
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row) + "\n")
            if i == blank_line_after:
                f.write("\n")


def test_grades_file_in_order_keeping_fields(tmp_path, capsys):
    src, dst = tmp_path / "gen.jsonl", tmp_path / "graded.jsonl"
    write_jsonl(src, ROWS, blank_line_after=2)
    assert main([str(src), str(dst), "--workers", "2", "--timeout", "1"]) == 0
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").split("\n") if line]
    assert [r["id"] for r in out] == ["a", "b", "c", "d", "e", "f"]
    assert [r["outcome"] for r in out] == ["correct", "correct", "wrong", "unparsable", "correct", "timeout"]
    assert [r["reward"] for r in out] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert all(isinstance(r["latency_s"], float) for r in out)
    assert out[3]["meta"] == {"k": [1, 2]} and out[4]["response"] == ROWS[4]["response"]
    assert "interrupted" in out[5]["detail"]
    table = capsys.readouterr().out
    assert "total" in table and "checks/s" in table and "timeout" in table


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"answer": "1"}', 'missing key "response"'),
        ('{"response": "x"}', 'key "answer"'),
        ('{"response": "x", "answer": "1", "verifier": "maths"}', "unknown \"verifier\" 'maths'; use one of"),
    ],
)
def test_bad_line_stops_before_grading_naming_file_and_line(tmp_path, capsys, line, message):
    src, dst = tmp_path / "gen.jsonl", tmp_path / "graded.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n", encoding="utf-8")
    assert main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2:" in err and message in err
    assert not dst.exists()


def test_runs_as_a_module(tmp_path):
    src, dst = tmp_path / "gen.jsonl", tmp_path / "graded.jsonl"
    write_jsonl(src, ROWS[:2])
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_lambda.grade", str(src), str(dst), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["outcome"] for line in dst.read_text().splitlines()] == ["correct", "correct"]
    assert "total" in proc.stdout
