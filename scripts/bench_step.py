"""Seconds per training step on workload W: this project in three modes and TRL's GRPOTrainer, side by side.

    make bench-trl-venv                      # once: TRL 1.16 in its own venv (.venv-trl)
    .venv/bin/python scripts/bench_step.py [--steps 6] [--modes sync_padded,...,trl_shipped]
        [--out runs/bench_step.json]

W (issue #10): SmolLM2-135M-Instruct from the local folder; 8 chat prompts "What is a + b? Put your final answer in
\\boxed{}." with (a, b) = 66+24, 10+21, 84+14, 95+98, 20+22, 55+40, 12+13, 12+54; G = 4; <= 128 new tokens;
temperature 1, top_p 1; one AdamW step over the 32 samples (lr 1e-6, weight decay 0, grad clip 1); bf16; β = 0;
the machine's 2 cores. Steady state: the first step is dropped, the median of the rest is reported.

Modes, each in a fresh process, one after another (nothing else should run meanwhile):
- `sync_padded`: generate → reward → update → sync in turn, padded micro-batches of 8 samples (the old default);
- `sync_tokens`: the same with length-aware micro-batches, `learner.micro_batch_tokens=1024`;
- `sync_packed`: the same with group packing, `learner.pack_groups=true` (a prompt and its G responses in one row);
- `async_k1`: `rollout.max_staleness=1` (batch s+1 generates while step s trains) with the packed learner;
- `trl_shipped` / `trl_tuned`: scripts/bench_trl.py in .venv-trl (as shipped: gradient checkpointing on, no
  tcmalloc; tuned: tcmalloc preloaded, checkpointing off).
Prints a table (median s/step, each mode's ratio to TRL tuned, our phase medians) and writes every step's time to
--out as JSON. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(66, 24), (10, 21), (84, 14), (95, 98), (20, 22), (55, 40), (12, 13), (12, 54)]
PROMPT = "What is {a} + {b}? Put your final answer in \\boxed{{}}."
W_OVERRIDES = [
    "experiment=cpu_demo", "logger=no_wandb", "model.path=smollm2-135m-instruct", "model.dtype=bfloat16",
    "model.max_prompt_tokens=128", "model.max_response_tokens=128", "data.source=jsonl", "data.prompt_template=plain",
    "data.shuffle=false", "data.prompts_per_step=8", "rollout.samples_per_prompt=4", "rollout.temperature=1.0",
    "rollout.top_p=1.0", "rollout.dtype=bfloat16", "learner.lr=1e-6", "learner.weight_decay=0.0",
    "learner.grad_clip=1.0", "learner.mini_batch_samples=32", "learner.micro_batch_samples=8",
    "algorithm.kl_coef=0.0", "trainer.eval_every_steps=0", "trainer.eval_before_train=false",
    "trainer.save_every_steps=0", "data.eval_files=[]",
]  # fmt: skip
OURS = {
    "sync_padded": ["rollout.max_staleness=0", "learner.micro_batch_tokens=null"],
    "sync_tokens": ["rollout.max_staleness=0", "learner.micro_batch_tokens=1024"],
    "sync_packed": ["rollout.max_staleness=0", "learner.micro_batch_tokens=1024", "learner.pack_groups=true"],
    "async_k1": ["rollout.max_staleness=1", "learner.micro_batch_tokens=1024", "learner.pack_groups=true"],
}
PHASES = ("generate", "learner_wait", "reward", "old_logp", "update", "sync", "other")


def write_prompts(folder: Path) -> Path:
    path = folder / "w_prompts.jsonl"
    rows = [
        {"id": f"w-{i}", "problem": PROMPT.format(a=a, b=b), "answer": str(a + b)}
        for i, (a, b) in enumerate(PAIRS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_ours(mode: str, steps: int, work: Path, data: Path, extra: list[str]) -> dict:
    out_dir = work / mode
    cmd = [sys.executable, "-m", "grpo_lambda.train", *W_OVERRIDES, *OURS[mode], *extra, f"data.train_files=[{data}]",
           f"trainer.total_steps={steps}", f"trainer.output_dir={out_dir}", f"trainer.run_name={mode}"]  # fmt: skip
    log = work / f"{mode}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{mode} failed (exit {rc}); see {log}")
    rows = [json.loads(line) for line in (out_dir / mode / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:]
    phases = {p: statistics.median(r.get(f"time/{p}_s") or 0.0 for r in steady) for p in PHASES}
    return {
        "framework": "grpo_lambda", "mode": mode, "overrides": [*W_OVERRIDES, *OURS[mode], *extra],
        "step_s": [r["time/step_s"] for r in rows], "median_s": statistics.median(r["time/step_s"] for r in steady),
        "phases_median_s": phases, "wall_s": time.perf_counter() - t0,
        "engine_generate_s": statistics.median(r["rollout/generate_s"] for r in steady),
        "engine_idle_s": statistics.median(r["time/engine_idle_s"] for r in steady),
        "staleness_mean": statistics.mean(r["rollout/staleness_mean"] for r in steady),
        "padding_frac": statistics.median(r["learner/padding_frac"] for r in steady),
        "reward_mean": [r["reward/mean"] for r in rows],
    }  # fmt: skip


def run_trl(mode: str, steps: int, work: Path, model: str) -> dict:
    python = ROOT / ".venv-trl" / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(
            f"{python} is missing: run `make bench-trl-venv` first (or leave out the trl modes)"
        )
    out = work / f"{mode}.json"
    cmd = [str(python), str(ROOT / "scripts" / "bench_trl.py"), "--model", model,
           "--mode", mode.removeprefix("trl_"), "--steps", str(steps), "--out", str(out)]  # fmt: skip
    log = work / f"{mode}.log"
    with log.open("w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{mode} failed (exit {rc}); see {log}")
    return {**json.loads(out.read_text()), "mode": mode}


def table(results: dict[str, dict]) -> str:
    ref = results.get("trl_tuned", {}).get("median_s")
    lines = ["| mode | median s/step | × faster than TRL tuned | generate / wait | update | sync | other |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, r in results.items():
        ratio = f"{ref / r['median_s']:.2f}" if ref else "–"
        ph = r.get("phases_median_s")
        if ph:
            gen = ph["generate"] or ph["learner_wait"]
            cols = f"{gen:.1f} | {ph['update'] + ph['old_logp']:.1f} | {ph['sync']:.2f} | {ph['other']:.2f}"
        else:
            cols = "– | – | – | –"
        lines.append(f"| {mode} | {r['median_s']:.1f} | {ratio} | {cols} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="steps per mode (the first is dropped)")
    p.add_argument("--modes", default="sync_padded,sync_tokens,sync_packed,async_k1,trl_tuned,trl_shipped")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_step.json"))
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for our modes")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_step"), help="run folders and logs")
    args = p.parse_args()

    from grpo_lambda.models import resolve_model

    model = str(resolve_model("smollm2-135m-instruct"))
    results: dict[str, dict] = {}
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = write_prompts(work)
    for mode in args.modes.split(","):
        print(f"[bench_step] {mode} ...", flush=True)
        results[mode] = run_trl(mode, args.steps, work, model) if mode.startswith("trl") else \
            run_ours(mode, args.steps, work, data, args.override)  # fmt: skip
        print(f"[bench_step] {mode}: median {results[mode]['median_s']:.2f} s/step", flush=True)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor()}, "steps": args.steps, "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(results))
    print(f"[bench_step] wrote {args.out}")


if __name__ == "__main__":
    main()
