"""Grade offline generations: ``python -m grpo_lambda.grade IN.jsonl OUT.jsonl [--workers 2] [--timeout 5]``.

Each input line is a JSON object ``{"response": str | null, "answer": str, "verifier": "math" | "gsm8k" |
"format"}`` (``verifier`` optional, default ``--verifier``; extra fields are kept). Each output line is the
same object with ``"reward"``, ``"outcome"`` and ``"latency_s"`` added (and ``"detail"`` for errors and
timeouts), in input order; blank lines are skipped. The whole input is validated before anything is graded:
a malformed line stops the run with ``IN.jsonl:LINE: what is wrong`` and exit code 2. A summary table
(outcome counts, mean reward, p50/p99 latency, checks/s per verifier) is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from grpo_lambda.rewards.metrics import outcome_metrics
from grpo_lambda.rewards.pool import VerifierPool
from grpo_lambda.rewards.spec import ANSWER_FORMATS, OUTCOMES, VerifyRequest, VerifyResult
from grpo_lambda.rewards.verifiers import MATH_FALLBACKS, VERIFIERS


class InputError(ValueError):
    """A malformed input line; the message names ``file:line``."""


def read_rows(
    path: Path, default_verifier: str, math_fallback: str = "none", answer_format: str | None = None
) -> Iterator[tuple[dict, VerifyRequest]]:
    """Yield ``(row, request)`` per non-blank line; ``InputError`` naming ``path:line`` on a malformed one.

    Bytes that are not UTF-8 are replaced (U+FFFD): model text is graded as it is, not rejected.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if "response" not in row:
                raise InputError(f'{where}: missing key "response" (the model output; null is allowed)')
            answer = row.get("answer")
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise InputError(f'{where}: key "answer" must be the gold answer as a string, got {answer!r}')
            verifier = row.get("verifier", default_verifier)
            if verifier not in VERIFIERS:
                raise InputError(
                    f'{where}: unknown "verifier" {verifier!r}; use one of {", ".join(sorted(VERIFIERS))}'
                )
            request = VerifyRequest(row["response"], str(answer), verifier=verifier, math_fallback=math_fallback,
                                    answer_format=answer_format)  # fmt: skip
            yield row, request


def json_line(row: dict) -> str:
    """``row`` as one JSON line; non-ASCII kept as is unless it cannot be UTF-8 encoded (lone surrogates)."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(row)
    return line + "\n"


def count_rows(path: Path, default_verifier: str = "math") -> int:
    """Validate every line of ``path`` (``InputError`` on the first bad one) and count the rows."""
    return sum(1 for _ in read_rows(path, default_verifier))


def summary_table(results_by_verifier: dict[str, list[VerifyResult]], wall_s: float) -> str:
    """A plain-text table: one row per verifier and a total row."""
    header = ["verifier", "n", *OUTCOMES, "reward", "p50_s", "p99_s"]
    everything = [r for results in results_by_verifier.values() for r in results]
    rows = [header]
    for name, results in [*sorted(results_by_verifier.items()), ("total", everything)]:
        m = outcome_metrics(results)
        counts = [str(sum(r.outcome == o for r in results)) for o in OUTCOMES]
        stats = [m["verifier/reward_mean"], m["verifier/latency_p50_s"], m["verifier/latency_p99_s"]]
        rows.append([name, str(len(results)), *counts, *(f"{x:.4f}" for x in stats)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    rate = len(everything) / wall_s if wall_s > 0 else 0.0
    lines.append(f"{len(everything)} checks in {wall_s:.2f} s ({rate:.0f} checks/s)")
    return "\n".join(lines)


def grade_file(
    in_path: Path,
    out_path: Path,
    pool: VerifierPool,
    default_verifier: str = "math",
    block_lines: int = 4096,
    math_fallback: str = "none",
    answer_format: str | None = None,
) -> dict[str, list[VerifyResult]]:
    """Grade ``in_path`` into ``out_path`` (written atomically); returns the results per verifier."""
    total = count_rows(in_path, default_verifier)
    by_verifier: dict[str, list[VerifyResult]] = {}
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    done = 0
    with open(tmp_path, "w", encoding="utf-8") as out:
        rows = read_rows(in_path, default_verifier, math_fallback, answer_format)
        while True:
            block = [pair for _, pair in zip(range(block_lines), rows)]
            if not block:
                break
            results = pool.score([request for _, request in block])
            for (row, request), result in zip(block, results):
                row["reward"], row["outcome"], row["latency_s"] = (
                    result.reward,
                    result.outcome,
                    result.latency_s,
                )
                if result.detail:
                    row["detail"] = result.detail
                out.write(json_line(row))
                by_verifier.setdefault(request.verifier, []).append(result)
            done += len(block)
            print(f"graded {done}/{total}", file=sys.stderr, flush=True)
    os.replace(tmp_path, out_path)
    return by_verifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lambda.grade",
        description="Grade JSONL generations with the reward verifiers (math-verify in time-limited subprocesses).",
    )
    parser.add_argument(
        "input", type=Path, help='JSONL with "response", "answer", optional "verifier" per line'
    )
    parser.add_argument("output", type=Path, help="JSONL written with reward, outcome, latency_s added")
    parser.add_argument("--workers", type=int, default=2, help="verifier subprocesses (default 2)")
    parser.add_argument("--timeout", type=float, default=5.0, help="wall-clock seconds per check (default 5)")
    parser.add_argument("--verifier", default="math", choices=sorted(VERIFIERS), help="default verifier")
    parser.add_argument("--chunk-size", type=int, default=16, help="requests per message to a subprocess")
    parser.add_argument(
        "--math-fallback",
        default="none",
        choices=MATH_FALLBACKS,
        help="math verifier, response without \\boxed{}: none = unparsable (the GRPO-λ authors' grading, default) "
        "or last_number (the text after 'answer is', else the last number)",
    )
    parser.add_argument(
        "--answer-format",
        default=None,
        choices=ANSWER_FORMATS,
        help="strict grading: only this answer marker counts, no fallback (what reward.strict_format=true does "
        "with the prompt's marker; the paper presets grade so). Default: each verifier's own rules",
    )
    args = parser.parse_args(argv)
    if args.answer_format and args.math_fallback != "none":
        parser.error("--answer-format reads only that marker: it cannot be combined with --math-fallback")
    if not args.input.is_file():
        parser.error(f"input file {args.input} does not exist")
    if args.workers < 1 or args.timeout <= 0:
        parser.error("--workers must be >= 1 and --timeout > 0")
    try:
        count_rows(args.input, args.verifier)  # fail on a bad line before starting any process
        with VerifierPool(
            num_workers=args.workers, timeout_s=args.timeout, chunk_size=args.chunk_size
        ) as pool:
            start = time.perf_counter()
            by_verifier = grade_file(
                args.input, args.output, pool, args.verifier, math_fallback=args.math_fallback,
                answer_format=args.answer_format,
            )  # fmt: skip
            wall_s = time.perf_counter() - start
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(by_verifier, wall_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
