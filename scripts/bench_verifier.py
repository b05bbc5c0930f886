"""Verifier throughput on model-like MATH outputs: checks/s and p50/p99 latency for pool sizes 1 and 2.

    .venv/bin/python scripts/bench_verifier.py [--checks 4000] [--pool-sizes 1 2] [--ray]

Responses are a few sentences of reasoning followed by ``\\boxed{answer}``, built from MATH-500 gold answers
(../shared/data/math500.jsonl, or $GRPO_LAMBDA_DATA_DIR), 8 samples per prompt: a "typical" mix of 50 % correct in the gold's own
spelling, 15 % correct in another spelling (0.5 for 1/2, \\dfrac, 27.0, x = ...), 35 % wrong (a number
changed by a random amount). Each mix component is also timed on its own. Besides wall-clock throughput it
reports the CPU time per check spent in the worker processes and in this process, which does not depend on
what else runs on the machine. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

from grpo_lambda.rewards import VerifierPool, VerifyRequest, outcome_metrics
from grpo_lambda.rewards.extract import as_integer, as_number

DATA_DIR = Path(
    os.environ.get("GRPO_LAMBDA_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
FALLBACK_GOLDS = [
    r"\frac{14}{3}",
    "27",
    r"\left( 3, \frac{\pi}{2} \right)",
    r"2\sqrt{5}",
    "(-\\infty, 2]",
    "0.25",
]
REASONING = [
    "Let's first restate the problem in terms of the given quantities.",
    r"We have $a + b = 12$ and $ab = 35$, so $a$ and $b$ are roots of $x^2 - 12x + 35 = 0$.",
    r"Substituting $x = 3$ gives $9 - 36 + 35 = 8$, which is not zero, so we try the other factor.",
    r"By the Pythagorean theorem, the hypotenuse is $\sqrt{5^2 + 12^2} = 13$.",
    r"Dividing both sides by $2$, we get $\frac{n(n+1)}{2} = 78$, hence $n = 12$.",
    "Now we count the cases separately and add them up, taking care not to double count.",
    r"Note that $\sin^2\theta + \cos^2\theta = 1$, which simplifies the expression considerably.",
    "Checking the boundary cases confirms that the formula holds for every value in the range.",
]


def golds() -> list[str]:
    path = DATA_DIR / "math500.jsonl"
    if not path.is_file():
        return FALLBACK_GOLDS
    return [
        json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]


def other_spelling(gold: str) -> str:
    integer, number = as_integer(gold), as_number(gold)
    if integer is not None:
        return f"{integer}.0"
    if number is not None:
        return (
            f"{float(number):.10g}"
            if "frac" in gold or "/" in gold
            else rf"\frac{{{number.numerator}}}{{{number.denominator}}}"
        )
    if "=" not in gold and "," not in gold:
        return f"x = {gold}"
    return gold.replace("\\frac", "\\dfrac").replace(" ", "")


def perturbed(gold: str, rng: random.Random) -> str:
    """A wrong answer: the first number changed by a random amount (samples of one prompt differ)."""
    match = re.search(r"\d+", gold)
    if not match:
        return f"{gold}+{rng.randint(1, 9)}"
    return gold[: match.start()] + str(int(match.group()) + rng.randint(1, 9)) + gold[match.end() :]


def response(answer: str, rng: random.Random) -> str:
    sentences = rng.sample(REASONING, k=rng.randint(4, 8))
    return " ".join(sentences) + f"\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."


def requests_for(kind: str, n: int, seed: int = 0, samples_per_prompt: int = 8) -> list[VerifyRequest]:
    """``n`` requests, ``samples_per_prompt`` consecutive ones per gold answer (as a GRPO batch is laid out)."""
    rng = random.Random(seed)
    answers = golds()
    out = []
    for i in range(n):
        gold = answers[(i // samples_per_prompt) % len(answers)]
        pick = kind if kind != "typical" else rng.choices(["same", "other", "wrong"], [0.50, 0.15, 0.35])[0]
        pred = {"same": gold, "other": other_spelling(gold), "wrong": perturbed(gold, rng)}[pick]
        out.append(VerifyRequest(response(pred, rng), gold, "math"))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by processes ``pids`` (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def bench(pool: VerifierPool, requests: list[VerifyRequest]) -> dict:
    pool.score(requests_for("typical", 64, seed=1))  # first calls import parts of sympy lazily: not timed
    pids = [pid for stats in pool.worker_stats() for pid in stats["pids"]]
    cpu_before, parent_before = cpu_seconds(pids), time.process_time()
    start = time.perf_counter()
    results = pool.score(requests)
    wall = time.perf_counter() - start
    worker_cpu, parent_cpu = cpu_seconds(pids) - cpu_before, time.process_time() - parent_before
    m = outcome_metrics(results, wall_s=wall)
    return {
        "checks/s": m["verifier/checks_per_s"],
        "p50_ms": 1000 * m["verifier/latency_p50_s"],
        "p99_ms": 1000 * m["verifier/latency_p99_s"],
        "worker_cpu_ms": 1000 * worker_cpu / len(requests),  # CPU per check in the worker processes
        "parent_cpu_ms": 1000 * parent_cpu / len(requests),  # CPU per check in this process (IPC, pickling)
        "correct": m["verifier/correct_rate"],
        "timeouts": m["verifier/timeout_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=4000)
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", default=["typical", "same", "other", "wrong"])
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--ray", action="store_true", help="Ray actors instead of local subprocesses")
    args = parser.parse_args()
    if args.ray:
        import ray

        from grpo_lambda.compat import ray_bind_localhost

        with ray_bind_localhost() as kwargs:
            ray.init(address="local", num_cpus=max(args.pool_sizes), include_dashboard=False, **kwargs)
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} mode={'ray' if args.ray else 'local'}")
    print("pool  responses   checks/s  p50_ms   p99_ms  worker_cpu_ms  parent_cpu_ms  correct  timeouts")
    for size in args.pool_sizes:
        with VerifierPool(num_workers=size, timeout_s=args.timeout, use_ray=args.ray, chunk_size=32) as pool:
            for kind in args.kinds:
                r = bench(pool, requests_for(kind, args.checks))
                print(
                    f"{size:>4}  {kind:<9} {r['checks/s']:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>8.2f}"
                    f" {r['worker_cpu_ms']:>14.3f} {r['parent_cpu_ms']:>14.3f} {r['correct']:>8.1%} {r['timeouts']:>9.1%}",
                    flush=True,
                )
    print(
        f"load={os.getloadavg()[0]:.1f} at the end (other processes share the cores: compare worker_cpu_ms)"
    )


if __name__ == "__main__":
    main()
