"""Benchmark lambda_trace (O(B·T)) against the dense T×T formulation (the authors' bmm) and a plain cumsum.

Each (method, T, style) runs in a fresh subprocess so peak memory is its own: CPU peak is the rise of the
process's max RSS over one fwd+bwd; on CUDA it is torch.cuda.max_memory_allocated. Times are the median of
several fwd+bwd repetitions. Measures only; asserts nothing.

    python scripts/bench_trace.py                                  # CPU, fp32, B=8, T in {512..4096}
    python scripts/bench_trace.py --device cuda --dtype bfloat16 --batch 64 --lengths 3072 --cumsum
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time

import torch

from grpo_lambda.algorithms import lambda_trace
from grpo_lambda.algorithms.dense_reference import dense_lambda_trace


def dense_trace(x, mask, *, gamma, lam, style, anchor="token", floor=0.0):
    """The dense formulation (the authors' bmm over a [B, T, T] weight matrix: what we avoid), in fp32."""
    z = dense_lambda_trace(
        x, mask, dtype=torch.float32, gamma=gamma, lam=lam, style=style, anchor=anchor, floor=floor
    )
    return z.to(x.dtype)


def cumsum_trace(x, mask, **_):
    return (x.float() * mask).cumsum(-1).to(x.dtype)


METHODS = {"ours": lambda_trace, "dense": dense_trace, "cumsum": cumsum_trace}


def _measure(job: dict, queue) -> None:
    try:
        torch.manual_seed(0)
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        dev = torch.device(job["device"])
        dtype = getattr(torch, job["dtype"])
        batch, horizon = job["batch"], job["horizon"]
        lengths = torch.randint(horizon // 2, horizon + 1, (batch,), device=dev)
        mask = torch.arange(horizon, device=dev)[None, :] < lengths[:, None]
        x = (torch.randn(batch, horizon, device=dev) * 0.01).to(dtype).requires_grad_()
        fn = METHODS[job["method"]]
        kw = dict(gamma=1.0, lam=0.99, style=job["style"], anchor="token", floor=job["floor"])

        def step():
            x.grad = None
            fn(x, mask, **kw).float().sum().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        for _ in range(job["warmup"]):
            step()
        times = []
        for _ in range(job["reps"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        queue.put({"ok": True, "ms": 1e3 * statistics.median(times), "peak_mb": max(peak, 0) / 2**20})
    except Exception as e:  # report e.g. an out-of-memory dense run as a row, not a crash
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"[:120]})


def run_job(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(job, queue))
    proc.start()
    proc.join()
    return queue.get() if not queue.empty() else {"ok": False, "error": f"exit code {proc.exitcode}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--styles", nargs="+", default=["recent", "both", "early"])
    p.add_argument("--floor", type=float, default=0.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--cumsum", action="store_true", help="also time a plain torch.cumsum of the same tensor")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    methods = ["ours", "dense"] + (["cumsum"] if args.cumsum else [])
    threads = args.threads or torch.get_num_threads()
    print(
        f"lambda_trace fwd+bwd, device={args.device} dtype={args.dtype} B={args.batch} threads={threads} "
        f"torch={torch.__version__} (median of {args.reps})"
    )
    header = f"{'T':>6} {'style':>7} | {'ours ms':>9} {'MB':>8} | {'dense ms':>9} {'MB':>8} | {'speed-up':>8} {'mem ÷':>7}"
    header += f" | {'cumsum ms':>9}" if args.cumsum else ""
    print(header)
    print("-" * len(header))
    rows = []
    for horizon in args.lengths:
        for style in args.styles:
            res = {}
            for method in methods:
                job = dict(vars(args), method=method, style=style, horizon=horizon)
                res[method] = run_job(job)
            ours, dense = res["ours"], res["dense"]

            def cell(r, key, fmt):
                return format(r[key], fmt) if r["ok"] else "fail"

            speed = f"{dense['ms'] / ours['ms']:.0f}x" if ours["ok"] and dense["ok"] else "-"
            mem = (
                f"{dense['peak_mb'] / max(ours['peak_mb'], 0.1):.0f}x" if ours["ok"] and dense["ok"] else "-"
            )
            line = (
                f"{horizon:>6} {style:>7} | {cell(ours, 'ms', '9.2f')} {cell(ours, 'peak_mb', '8.1f')} | "
                f"{cell(dense, 'ms', '9.2f')} {cell(dense, 'peak_mb', '8.1f')} | {speed:>8} {mem:>7}"
            )
            if args.cumsum:
                line += f" | {cell(res['cumsum'], 'ms', '9.3f')}"
            print(line, flush=True)
            rows.append({"T": horizon, "style": style, **{m: res[m] for m in methods}})
            for r in res.values():
                if not r["ok"]:
                    print(f"    {r['error']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
