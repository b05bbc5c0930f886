"""JSONL datasets: one problem per line with ``id``, ``problem``, ``answer`` (see shared/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("problem", "answer")


class DataError(ValueError):
    """A data file or row is malformed; the message names ``file:line`` and what is wrong."""


def load_jsonl(path: str | Path, max_rows: int | None = None) -> list[dict[str, Any]]:
    """Read rows ``{id, problem, answer, source, dataset, ...}`` from a JSONL file.

    ``problem`` must be a non-empty string; ``answer`` a string or number (kept as a string). A missing ``id``
    becomes ``<file stem>-<line>``; ``dataset`` is the file stem (used to pick a verifier and name eval sets).
    Blank lines are skipped. Any other problem raises DataError naming ``file:line``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            rows.append(_check_row(row, where, path.stem, lineno, seen))
    return rows


def _check_row(row: Any, where: str, stem: str, lineno: int, seen: dict[str, int]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with problem and answer, got {type(row).__name__}")
    for key in REQUIRED_FIELDS:
        if key not in row:
            raise DataError(
                f"{where}: row is missing {key!r} (every row needs problem and answer; id is optional)"
            )
    if not isinstance(row["problem"], str) or not row["problem"].strip():
        raise DataError(f"{where}: 'problem' must be a non-empty string, got {row['problem']!r}")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
        raise DataError(f"{where}: 'answer' must be a non-empty string or number, got {answer!r}")
    row["answer"] = str(answer)
    row["id"] = str(row.get("id", f"{stem}-{lineno}"))
    if row["id"] in seen:
        raise DataError(f"{where}: duplicate id {row['id']!r} (first at line {seen[row['id']]})")
    seen[row["id"]] = lineno
    row.setdefault("source", stem)
    row.setdefault("dataset", stem)
    return row
