"""JSONL datasets: one problem per line with ``id``, ``problem``, ``answer`` (see shared/data/README.md).

Every way a file can be wrong is a `DataError` with one line that names ``file:line`` (the field, where there is
one) and what to do, raised while the rows are built: before Ray or any engine starts (`Trainer.__init__`,
`evaluate.prepare`). ``python -m grpo_lambda.train`` prints it as ``Data error: ...`` and exits 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("problem", "answer")
# Field names other datasets use for ours: named in the error when a row has one of them instead.
FIELD_ALIASES = {
    "problem": ("question", "prompt", "input", "query", "instruction"),
    "answer": ("solution", "final_answer", "target", "output", "label", "gold"),
}
_ROW_HELP = 'each line must be one JSON object like {"id": "q1", "problem": "What is 2+3?", "answer": "5"}'


class DataError(ValueError):
    """A data file or row is malformed; the message names ``file:line`` and what is wrong."""


def load_jsonl(
    path: str | Path, max_rows: int | None = None, verifiers: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Read rows ``{id, problem, answer, source, dataset, ...}`` from a JSONL file.

    ``problem`` must be a non-empty string; ``answer`` a non-empty string or a finite number (kept as a string);
    ``id`` (optional) a string or integer, unique in the file; a missing one becomes ``<file stem>-<line>``.
    ``dataset`` is the file stem (used to pick a verifier and name eval sets). A row's own ``verifier`` must be one
    of `verifiers` when they are given. Blank lines are skipped (a UTF-8 byte-order mark too), but a file without
    a single row is an error. Any problem raises DataError naming ``file:line``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file (check data.data_dir and the file names in data.*_files)")
    if not path.is_file():
        raise DataError(f"{path}: not a file (data.train_files / data.eval_files list .jsonl files)")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    lines = 0
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            lines = lineno
            if max_rows is not None and len(rows) >= max_rows:
                break
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where}: not UTF-8 ({exc.reason} at byte {exc.start} of the line): re-encode the file as "
                    "UTF-8, e.g. iconv -f latin1 -t utf-8"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # columns then count on this line
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno}): {_ROW_HELP}"
                ) from None
            except RecursionError:
                raise DataError(f"{where}: JSON nested too deeply: {_ROW_HELP}") from None
            rows.append(_check_row(row, where, path.stem, lineno, seen, verifiers))
    if not rows and (max_rows is None or max_rows > 0):
        what = "is empty" if lines == 0 else f"has only blank lines ({lines})"
        raise DataError(
            f"{path}:1: no rows: the file {what}; {_ROW_HELP}, or remove the file from the config"
        )
    return rows


def _check_row(
    row: Any, where: str, stem: str, lineno: int, seen: dict[str, int], verifiers: Collection[str] | None
) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got a JSON {_json_type(row)}; {_ROW_HELP}")
    for key in REQUIRED_FIELDS:
        if key not in row:
            alias = next((a for a in FIELD_ALIASES[key] if a in row), None)
            hint = f"; this row has {alias!r}: rename it to {key!r}" if alias else ""
            raise DataError(
                f"{where}: field {key!r} is missing (every row needs 'problem' and 'answer'; 'id' is optional; "
                f"the row has {sorted(row)[:8]}){hint}"
            )
    problem = row["problem"]
    if not isinstance(problem, str):
        raise DataError(f"{where}: field 'problem' must be a string, got a JSON {_json_type(problem)}")
    if not problem.strip():
        raise DataError(f"{where}: field 'problem' is empty: fill it in or delete the line")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(
            f"{where}: field 'answer' must be a string or a number, got a JSON {_json_type(answer)} "
            f"{_short(answer)}"
        )
    if isinstance(answer, float) and not math.isfinite(answer):
        raise DataError(f"{where}: field 'answer' is {answer}: write a finite number or a string")
    if str(answer).strip() == "":
        raise DataError(f"{where}: field 'answer' is empty: fill in the reference answer or delete the line")
    row["answer"] = str(answer)
    if "id" in row:
        if (
            isinstance(row["id"], bool)
            or not isinstance(row["id"], (str, int))
            or str(row["id"]).strip() == ""
        ):
            raise DataError(
                f"{where}: field 'id' must be a non-empty string or an integer, got {_short(row['id'])} "
                "(or leave it out: the id becomes <file stem>-<line>)"
            )
    row["id"] = str(row.get("id", f"{stem}-{lineno}"))
    if row["id"] in seen:
        raise DataError(
            f"{where}: duplicate id {row['id']!r} (first at line {seen[row['id']]}): ids must be unique in a file"
        )
    seen[row["id"]] = lineno
    if "verifier" in row and verifiers is not None and row["verifier"] not in verifiers:
        raise DataError(
            f"{where}: field 'verifier' is {_short(row['verifier'])}, not one of {sorted(verifiers)} "
            "(or leave it out: reward.verifier_by_dataset / reward.verifier decide)"
        )
    for key in ("source", "dataset"):
        if key in row and not isinstance(row[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {_short(row[key])}")
    row.setdefault("source", stem)
    row.setdefault("dataset", stem)
    return row


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
