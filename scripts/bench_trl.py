"""Step time of TRL's `GRPOTrainer` on workload W, on CPU: the TRL side of the side-by-side benchmark (#10).

Runs inside its own venv, `.venv-trl` (`make bench-trl-venv`: trl==1.16.0 beside the CPU torch 2.13.0); it does not
import grpo_lambda, whose pins need not agree with TRL's.

Workload W
  model     SmolLM2-135M-Instruct from a local Hugging Face folder (`--model DIR`; no hub access)
  prompts   8 chat prompts (conversational format, the tokenizer's chat template):
            "What is a + b? Put your final answer in \\boxed{}." for (a, b) in PAIRS below
  sampling  G = 4 completions per prompt (32 samples), <= 128 new tokens, temperature 1, top_p 1, top_k off
  update    one AdamW step over the 32 samples per step: lr 1e-6, weight decay 0, grad clip 1, beta = 0 (no reference
            model), bf16 (TRL's default on CPU: fp32 weights, bf16 autocast), 2 torch threads
  reward    1.0 if the last \\boxed{...} holds str(a + b), else 0.0
  step      one optimizer step = one generation of 32 samples + one update (per_device_train_batch_size=32,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1)

Modes
  shipped   TRL's defaults: gradient checkpointing on (GRPOConfig's default), the default allocator (an LD_PRELOADed
            tcmalloc is taken out by re-executing without it)
  tuned     gradient checkpointing off and tcmalloc preloaded: without it in LD_PRELOAD the script re-executes
            itself with LD_PRELOAD set (the allocator must be there when the process starts)

Timing: each step's wall time from the callbacks `on_step_begin` to `on_step_end` (generation, rewards, loss,
backward, optimizer step); the first step is warm-up, `median_s` is the median of the others. `rollout_s`: the
part of each step in TRL's `_generate_and_score_completions` (generation, rewards, advantages).

Precision: with `bf16=True` and the model given as a path, TRL loads fp32 weights and accelerate runs the forward
passes (generation too) under bf16 autocast. `--model-dtype bfloat16` loads bf16 weights instead (not "as shipped").

Run (from the repository root):
  make bench-trl-venv
  .venv-trl/bin/python scripts/bench_trl.py --model /root/.cache/grpo_lambda/models/smollm2-135m-instruct \\
      --mode tuned --steps 6 --out /tmp/trl_bench_tuned.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
PAIRS = [(66, 24), (10, 21), (84, 14), (95, 98), (20, 22), (55, 40), (12, 13), (12, 54)]
PROMPT = "What is {a} + {b}? Put your final answer in \\boxed{{}}."
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 128
_REEXEC_MARK = "BENCH_TRL_REEXEC"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", required=True, help="local Hugging Face folder of SmolLM2-135M-Instruct")
    p.add_argument("--mode", choices=("shipped", "tuned"), default="shipped")
    p.add_argument(
        "--steps", type=int, default=6, help="optimizer steps; the first is dropped from the median"
    )
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights' dtype (GRPOConfig.model_init_kwargs); TRL's default float32 + bf16 autocast is 'as shipped'",
    )
    return p.parse_args(argv)


def ensure_allocator(mode: str) -> None:
    """Re-execute this script so that tcmalloc is preloaded (tuned) or not (shipped): LD_PRELOAD only acts when a
    process starts. Once at most (a marker in the environment stops a loop)."""
    preload = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    has = any("tcmalloc" in p for p in preload)
    if os.environ.get(_REEXEC_MARK) or has == (mode == "tuned"):
        return
    if mode == "tuned" and not os.path.exists(TCMALLOC):
        print(
            f"warning: {TCMALLOC} missing (apt-get install libtcmalloc-minimal4); tuned runs without tcmalloc"
        )
        return
    new = [TCMALLOC, *preload] if mode == "tuned" else [p for p in preload if "tcmalloc" not in p]
    env = dict(os.environ, LD_PRELOAD=":".join(new), **{_REEXEC_MARK: "1"})
    if not new:
        env.pop("LD_PRELOAD")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def tcmalloc_loaded() -> bool:
    """Whether tcmalloc is mapped into this process (what LD_PRELOAD actually did)."""
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" in f.read()
    except OSError:
        return False


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_reward(completions, answer, **_) -> list[float]:
    """1.0 if the last \\boxed{...} in the completion holds the answer exactly (spaces stripped), else 0.0."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        found = _BOXED.findall(text)
        out.append(1.0 if found and found[-1].strip() == ans else 0.0)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    ensure_allocator(args.mode)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["WANDB_DISABLED"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local folder; never reach for the hub

    import accelerate
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    # GRPOConfig's default in trl 1.16 is gradient_checkpointing=True ("shipped"); tuned turns it off.
    gradient_checkpointing = args.mode == "shipped"

    dataset = datasets.Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": PROMPT.format(a=a, b=b)}], "answer": str(a + b)}
            for a, b in PAIRS
        ]
    )

    rewards: list[float] = []
    lengths: list[float] = []

    def reward(completions, answer, completion_ids=None, **kw) -> list[float]:
        r = boxed_reward(completions, answer)
        rewards.append(sum(r) / len(r))
        if completion_ids is not None:
            lengths.append(sum(len(c) for c in completion_ids) / len(completion_ids))
        return r

    reward.__name__ = "boxed_reward"

    rollout_s: list[float] = []

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin: float | None = None
            self.step_s: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_s.append(time.perf_counter() - self.begin)
            rollout = f" (rollout {rollout_s[-1]:.2f} s)" if rollout_s else ""
            print(f"[bench_trl] step {len(self.step_s)}: {self.step_s[-1]:.2f} s{rollout}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            # W: 8 prompts x G=4 = 32 samples; one generation batch and one optimizer step per trainer step.
            per_device_train_batch_size=NUM_GENERATIONS * len(PAIRS),
            num_generations=NUM_GENERATIONS,
            gradient_accumulation_steps=1,
            steps_per_generation=1,  # => generation_batch_size = 32 (set one of the two, not both)
            num_iterations=1,
            max_completion_length=MAX_NEW_TOKENS,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.0,
            learning_rate=1e-6,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            lr_scheduler_type="constant",  # the step count must not change the update
            warmup_steps=0,
            bf16=True,
            use_cpu=True,
            use_vllm=False,
            gradient_checkpointing=gradient_checkpointing,
            max_steps=args.steps,
            seed=args.seed,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            model_init_kwargs={"dtype": args.model_dtype},
        )
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        t0 = time.perf_counter()
        trainer = GRPOTrainer(
            model=args.model,
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        timer = StepTimer()
        trainer.add_callback(timer)
        generate_and_score = trainer._generate_and_score_completions

        def timed_generate_and_score(*a, **kw):  # same call, timed: the rollout share of a step
            t = time.perf_counter()
            out = generate_and_score(*a, **kw)
            rollout_s.append(time.perf_counter() - t)
            return out

        trainer._generate_and_score_completions = timed_generate_and_score
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        model_dtype = str(next(trainer.model.parameters()).dtype).removeprefix("torch.")
        gc_on = bool(getattr(trainer.model, "is_gradient_checkpointing", config.gradient_checkpointing))

    steady = timer.step_s[1:]
    result = {
        "framework": "trl",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "accelerate_version": accelerate.__version__,
        "mode": args.mode,
        "step_s": [round(s, 3) for s in timer.step_s],
        "median_s": round(statistics.median(steady), 3) if steady else None,
        "gradient_checkpointing": gc_on,
        "tcmalloc": tcmalloc_loaded(),
        "rollout_s": [round(s, 3) for s in rollout_s],
        "reward_mean": [round(r, 4) for r in rewards],
        "completion_len_mean": [round(n, 1) for n in lengths],
        "threads": torch.get_num_threads(),
        "model_dtype": model_dtype,
        "bf16_autocast": bool(config.bf16),
        "load_s": round(load_s, 2),
        "train_s": round(train_s, 2),
        "model": os.path.abspath(args.model),
    }
    median = f"{result['median_s']:.2f} s" if steady else "n/a (one step)"
    print(
        f"[bench_trl] trl {trl.__version__} mode={args.mode} gc={gc_on} tcmalloc={result['tcmalloc']} "
        f"threads={result['threads']} steps={len(timer.step_s)} median(steps 2..)={median} "
        f"step_s={result['step_s']} reward={result['reward_mean']}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
