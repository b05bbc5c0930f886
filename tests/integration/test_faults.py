"""Faults injected for real (docs/faults.md, issue #13): real Ray, vLLM (CPU), DeepSpeed (gloo) and a tiny random
model; nothing is mocked around the fault, and nothing skips on the CPU machine. One section per part:

- rollout engines: a process SIGKILLed mid-generation or before a weight push, or SIGSTOPped past its deadline;
- learner ranks: a NaN in one rank's loss or gradient, a rank's process SIGKILLed;
- the driver and its checkpoints: `python -m grpo_lambda.train` SIGKILLed between and during checkpoint writes, a
  checkpoint folder that is full (tmpfs) or read-only (a read-only mount);
- bad data: a malformed JSONL line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from grpo_lambda import checkpoint, leftovers
from grpo_lambda.config import AlgorithmConfig, Config, LearnerConfig, ModelConfig, load_config
from grpo_lambda.learner import build_batch, concat_batches

pytestmark = [pytest.mark.integration]


# ========== Rollout engines =========================================================================================
# Rollout engine faults, injected for real: an engine's process killed (SIGKILL) mid-generation or before a
# weight sync, or stopped (SIGSTOP) so that it misses its deadline. The engine is replaced, joins the weight-sync
# group, takes the current weights (checked by version and, with rollout.sync_check, read back), and the prompts it
# owed are generated again; no step is lost. docs/faults.md.


ENGINE_RUN = [
    "experiment=cpu_tiny_test",
    "data.arithmetic.max_operand=1",
    "model.max_response_tokens=48",
    "rollout.num_workers=2",
    "rollout.samples_per_prompt=4",
    "data.prompts_per_step=2",
    "learner.world_size=1",  # 2 engines + 1 rank + the verifier fit the 4 CPUs of the test cluster
    "learner.mini_batch_samples=8",
    "learner.micro_batch_samples=2",
    "rollout.sync_check=true",  # every push, resends included, is read back from the engines
    "trainer.eval_every_steps=0",
    "trainer.eval_before_train=false",
]


def make_engine_trainer(tmp_path, *overrides):
    from grpo_lambda.trainer import Trainer

    return Trainer(load_config([*ENGINE_RUN, f"trainer.output_dir={tmp_path}", *overrides]))


def engine_pid(engine) -> int:
    import ray

    return ray.get(engine.ready.remote(), timeout=60)["pid"]


def token_ids(groups) -> list[list[list[int]]]:
    return [[s.response_ids for s in group] for group in groups]


def versions(trainer) -> list[int]:
    import ray

    return ray.get([e.weights_version.remote() for e in trainer.rollout.engines], timeout=60)


@pytest.mark.timeout(900)
def test_a_killed_or_hung_engine_is_replaced_with_the_current_weights_and_its_prompts_regenerated(
    ray_local, tmp_path
):
    """One trainer, three faults: SIGKILL mid-generation (the regenerated samples equal a healthy engine's:
    same per-prompt seeds, same weights), SIGKILL before a weight sync (the push completes through the
    replacement), SIGSTOP (the engine misses rollout.generate_timeout_s, is killed and replaced). After each,
    every engine holds the learner's version; sync_check has compared their weights with the learner's."""
    import dataclasses

    trainer = make_engine_trainer(tmp_path, "rollout.generate_timeout_s=30", "rollout.max_engine_restarts=5")
    try:
        trainer.step()  # version 1: trained weights, which a replacement cannot load from the model folder
        rollout, sync = trainer.rollout, trainer.weight_sync
        prompts = [trainer.sampler.dataset[i] for i in range(8)]
        spec = dataclasses.replace(trainer._spec(seed=1234), max_tokens=48)
        healthy = rollout.generate(prompts, spec)

        # 1. SIGKILL while generating
        pid = engine_pid(rollout.engines[0])
        pending = rollout.submit(prompts, spec)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        samples, _ = rollout.collect(pending)
        assert rollout.restarts == 1
        assert engine_pid(rollout.engines[0]) != pid
        assert versions(trainer) == [sync.version] * 2
        assert token_ids(samples) == token_ids(healthy)  # engine 0's prompts regenerated, not lost or changed
        assert all(s.weights_version == sync.version for group in samples for s in group)

        # 2. SIGKILL between generation and the weight push
        os.kill(engine_pid(rollout.engines[1]), signal.SIGKILL)
        time.sleep(1.0)
        sync.push()  # engine 1 is replaced inside the push and takes the new version with the other
        assert rollout.restarts == 2
        assert versions(trainer) == [sync.version] * 2 == [2, 2]

        # 3. SIGSTOP: alive but silent; the deadline finds it
        stopped = engine_pid(rollout.engines[1])
        os.kill(stopped, signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            again = rollout.generate(prompts, spec)
            waited = time.perf_counter() - t0
        finally:
            try:
                os.kill(stopped, signal.SIGCONT)  # already killed by the replacement; harmless if so
            except ProcessLookupError:
                pass
        assert rollout.restarts == 3
        assert 30 <= waited < 150
        assert versions(trainer) == [sync.version] * 2
        assert len(again) == len(prompts) and all(len(g) == spec.n for g in again)

        # the run goes on: a whole step, its push read back and compared
        metrics = trainer.step()
        assert metrics["rollout/engine_restarts"] == 3
        assert metrics["rollout/weights_version"] == 3 == sync.version
    finally:
        trainer.shutdown()


@pytest.mark.timeout(600)
def test_async_pipeline_survives_an_engine_killed_with_batches_in_flight(ray_local, tmp_path):
    """rollout.max_staleness=1: batch s+1 is generating while step s trains. Killing an engine then loses its
    in-flight share; the step that collects it regenerates it on the replacement, and every step completes
    with staleness within k."""
    trainer = make_engine_trainer(tmp_path, "rollout.max_staleness=1", "trainer.total_steps=3")
    try:
        first = trainer.step()  # batch 2 is now in flight
        os.kill(engine_pid(trainer.rollout.engines[0]), signal.SIGKILL)
        rest = [trainer.step(), trainer.step()]
        assert trainer.rollout.restarts == 1
        assert [m["rollout/engine_restarts"] for m in (first, *rest)] == [0, 1, 1]
        assert all(m["rollout/staleness_max"] <= 1 for m in (first, *rest))
        assert trainer.weight_sync.version == 3
        assert versions(trainer) == [3, 3]
    finally:
        trainer.shutdown()


@pytest.mark.timeout(300)
def test_engine_restarts_are_bounded(ray_local, tmp_path):
    """rollout.max_engine_restarts=0: a dead engine stops the run at once with a message naming the key,
    instead of a retry loop or a hang in the sync."""
    from grpo_lambda.rollout.group import EngineFailure

    trainer = make_engine_trainer(tmp_path, "rollout.max_engine_restarts=0", "rollout.sync_timeout_s=120")
    try:
        os.kill(engine_pid(trainer.rollout.engines[0]), signal.SIGKILL)
        t0 = time.perf_counter()
        with pytest.raises(EngineFailure, match="rollout.max_engine_restarts=0"):
            trainer.step()
        assert time.perf_counter() - t0 < 60
    finally:
        trainer.shutdown()


# ========== Learner ranks ===========================================================================================
# Learner faults for real (docs/faults.md): Ray actors, DeepSpeed on gloo, a tiny Llama; nothing mocked.
#
# - A NaN in one rank's loss or gradient skips the optimiser step on every rank: weights and optimiser state stay
#   bitwise as they were, the LR schedule does not advance, and the next finite step trains normally.
# - A run whose steps are skipped keeps the engines' weights and version, continues, and stops past
#   trainer.max_consecutive_skips.
# - A learner rank killed with SIGKILL stops the call within seconds, naming the rank (and, from Trainer.run, the last
#   good checkpoint); trainer.resume=auto continues the run.
#
# Faults reach a learner actor through Ray's own `__ray_call__` (a function run inside the actor's process): a
# gradient hook that writes NaN, or the actor's pid to kill. The functions are local (cloudpickle sends them by value).


LR = 1e-3
WARMUP = 4  # linear warm-up: a skipped step must not advance it


def learner_config(model_dir, stage: int, dtype: str, **learner) -> Config:
    return Config(model=ModelConfig(path=str(model_dir), dtype=dtype, max_response_tokens=16),
                  algorithm=AlgorithmConfig(kl_coef=0.0, behaviour_is="none"),
                  learner=LearnerConfig(world_size=2, zero_stage=stage, lr=LR, lr_schedule="linear_warmup",
                                        warmup_steps=WARMUP, **{"mini_batch_samples": 8, "micro_batch_samples": 2,
                                                                **learner}))  # fmt: skip


def make_batch(seed: int, n: int = 8, nan_row: int | None = None):
    """n samples (prompts of 2-6, responses of 1-12 tokens); `nan_row` gets a NaN advantage. With 8 samples in
    one mini-batch of 2 ranks, rows 4-7 are rank 1's (batch.shard_for_data_parallel)."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, 256, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    advantages = torch.randn(n, generator=g)
    if nan_row is not None:
        advantages[nan_row] = float("nan")
    return build_batch([ids(2, 7) for _ in range(n)], [ids(1, 13) for _ in range(n)], advantages)


def nan_gradient_hook(bad_steps):
    """A function for `actor.__ray_call__`: on that learner rank, the gradient of the model's last parameter
    becomes NaN during the optimiser updates whose index (DeepSpeed's `global_steps`, skipped ones included) is
    in `bad_steps` (a predicate); the loss stays finite."""

    def install(worker):
        param = [p for p in worker.engine.module.parameters() if p.requires_grad][-1]
        engine = worker.engine
        param.register_hook(
            lambda g: torch.full_like(g, float("nan")) if bad_steps(engine.global_steps) else g
        )

    return install


def per_rank(group, fn):
    import ray

    return ray.get([actor.__ray_call__.remote(fn) for actor in group.group.actors])


# (ZeRO stage, dtype, where the NaN goes in): the optimiser each runs is DeepSpeedZeroOptimizer (ZeRO-1/2 fp32,
# ZeRO-2 bf16), BF16_Optimizer (ZeRO-1 bf16 with fp32 accumulation), DeepSpeedZeroOptimizer_Stage3, and at ZeRO-0
# fp32 our own torch optimiser, which DeepSpeed does not check (deepspeed_setup._Skippable).
SKIP_CASES = [(2, "float32", "advantage"), (3, "bfloat16", "advantage"), (0, "float32", "advantage"),
              (1, "bfloat16", "gradient")]  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage, dtype, fault", SKIP_CASES)
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(ray_local, tiny_model_dir, stage, dtype, fault):
    from grpo_lambda.learner.group import LearnerGroup

    group = LearnerGroup(learner_config(tiny_model_dir, stage, dtype), str(tiny_model_dir))
    try:
        first = group.train_step(make_batch(1))  # a real step first: the optimiser's moments exist
        weights, optimiser = group.param_checksums(), group.optimizer_checksums()
        if fault == "advantage":  # rank 1's first micro-batch: its loss and gradients are NaN
            bad = group.train_step(make_batch(2, nan_row=4))
        else:  # a finite loss with a NaN gradient on rank 1 only, in the next update
            import ray

            at = per_rank(group, lambda w: w.engine.global_steps)[1]
            ray.get(group.group.actors[1].__ray_call__.remote(nan_gradient_hook(lambda s: s == at)))
            bad = group.train_step(make_batch(2))
        skipped_per_rank = per_rank(group, lambda w: (w.engine.skipped_steps, w.engine.was_step_applied()))
        weights_after, optimiser_after = group.param_checksums(), group.optimizer_checksums()
        after = group.train_step(make_batch(3))
        weights_next, optimiser_next = group.param_checksums(), group.optimizer_checksums()
    finally:
        group.shutdown()

    assert skipped_per_rank == [(1, False), (1, False)]  # DeepSpeed (or we, at ZeRO-0 fp32) skipped on both
    assert weights_after == weights and optimiser_after == optimiser  # bitwise, every rank
    assert bad["learner/skipped_steps"] == 1 and bad["learner/skipped_steps_total"] == 1
    assert bad["learner/num_updates"] == 1 and bad["learner/updates_total"] == 1
    # nothing was applied: no loss or grad norm to report (NaN, not an inf/NaN average or a made-up 0)
    assert math.isnan(bad["learner/loss"]) and math.isnan(bad["learner/grad_norm"])
    assert bad["learner/num_tokens"] == 0
    # the next finite step trains normally, at the LR the skipped one would have had (the schedule stood still)
    assert after["learner/skipped_steps"] == 0 and after["learner/skipped_steps_total"] == 1
    assert after["learner/updates_total"] == 2
    assert math.isfinite(after["learner/loss"]) and 0 < after["learner/grad_norm"] < math.inf
    assert first["learner/lr"] == pytest.approx(LR / WARMUP)
    assert bad["learner/lr"] == after["learner/lr"] == pytest.approx(2 * LR / WARMUP)
    assert weights_next[0] == weights_next[1] and weights_next != weights_after
    assert optimiser_next[0] != optimiser_after[0] and optimiser_next[1] != optimiser_after[1]


@pytest.mark.timeout(300)
def test_a_killed_learner_rank_fails_the_call_at_once_naming_it(ray_local, tiny_model_dir):
    """SIGKILL rank 1 a second into a long train_step: rank 0 is left in a gloo collective that would wait for
    its peer until the process group's timeout (600 s); the driver raises LearnerFailure naming rank 1 at once,
    and every later call on the group fails fast too."""
    from grpo_lambda.learner.group import LearnerFailure, LearnerGroup

    cfg = learner_config(tiny_model_dir, 2, "float32", mini_batch_samples=256, micro_batch_samples=1)
    group = LearnerGroup(cfg, str(tiny_model_dir))
    try:
        pid = group.processes[1]["pid"]
        assert per_rank(group, lambda w: os.getpid())[1] == pid
        killed_at = []

        def kill():
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

        long_batch = concat_batches([make_batch(1)] * 32)  # 256 samples, 128 forward/backward passes per rank
        timer = threading.Timer(1.0, kill)
        timer.start()
        with pytest.raises(LearnerFailure) as info:
            group.train_step(long_batch)
        took = time.monotonic() - killed_at[0]
        t0 = time.monotonic()
        with pytest.raises(LearnerFailure, match="learner rank 1 .* died during param_checksum"):
            group.param_checksums()  # rank 0 is still stuck; the dead rank answers for the group at once
        took_next = time.monotonic() - t0
    finally:
        group.shutdown()
    message = str(info.value)
    assert message.startswith(f"learner rank 1 (pid {pid}, node ") and "died during train_step" in message
    assert info.value.ranks == [1]
    assert took < 30 and took_next < 30, (took, took_next)


def make_trainer(tmp_path, *overrides):
    """A tiny run (tests/integration/test_trainer.py's settings): 8 samples and 2 optimiser updates per step."""
    from grpo_lambda.config import load_config
    from grpo_lambda.trainer import Trainer

    base = ["experiment=cpu_tiny_test", "algorithm.entropy_coef=0.01", "data.arithmetic.max_operand=1",
            "model.max_response_tokens=12", "rollout.samples_per_prompt=4", "data.prompts_per_step=2",
            "learner.mini_batch_samples=4", "learner.micro_batch_samples=1", "trainer.eval_every_steps=0",
            "trainer.export_final=false"]  # fmt: skip
    return Trainer(load_config([*base, f"trainer.output_dir={tmp_path}", *overrides]))


@pytest.mark.timeout(600)
def test_skipped_steps_keep_the_engines_weights_and_stop_past_max_consecutive_skips(ray_local, tmp_path):
    """NaN gradients on learner rank 1 in steps 1, 3 and 4 (both updates of each), max_consecutive_skips=1:
    step 1 is skipped (no weight push: the engines keep version 0 and the learner's weights, which step 2's
    sampling log-probs confirm), step 2 trains and pushes, step 3 is skipped, step 4 is the second skipped step in a
    row and stops the run with the non-finite-loss message."""
    import ray

    trainer = make_trainer(tmp_path, "trainer.total_steps=4", "trainer.max_consecutive_skips=1")
    try:
        # optimiser updates 0-1 are step 1's, 2-3 step 2's, 4-7 steps 3-4's
        ray.get(
            trainer.learner.group.actors[1].__ray_call__.remote(nan_gradient_hook(lambda s: s < 2 or s >= 4))
        )

        def engine_versions():
            return ray.get([e.weights_version.remote() for e in trainer.rollout.engines])

        weights = trainer.learner.param_checksums()
        first = trainer.step()
        assert first["learner/skipped_steps"] == 2 and first["learner/num_updates"] == 2
        assert math.isnan(first["learner/loss"]) and math.isnan(first["learner/grad_norm"])
        assert trainer.learner.param_checksums() == weights
        assert trainer.weight_sync.version == 0 and first["rollout/weights_version"] == 0
        assert engine_versions() == [0] and "time/sync_s" not in first

        second = trainer.step()
        assert second["learner/skipped_steps"] == 0 and second["learner/skipped_steps_total"] == 2
        assert math.isfinite(second["learner/loss"]) and second["learner/grad_norm"] > 0
        # the engine sampled step 2 with exactly the learner's (unchanged) weights: fp32 on both sides
        assert second["rollout/logp_abs_diff_max"] < 1e-3
        assert trainer.weight_sync.version == 1 and engine_versions() == [1]
        weights = trainer.learner.param_checksums()

        third = trainer.step()  # skipped, tolerated (1 in a row)
        assert third["learner/skipped_steps"] == 2 and third["rollout/weights_version"] == 1
        assert trainer.learner.param_checksums() == weights and engine_versions() == [1]
        with pytest.raises(FloatingPointError) as info:
            trainer.step()
        assert trainer.learner.param_checksums() == weights and engine_versions() == [1]
    finally:
        trainer.shutdown()
    assert str(info.value).startswith(
        "step 4: learner loss is nan, non-finite loss or gradient in 2 steps in a row (every update skipped; "
        "trainer.max_consecutive_skips=1); stopping before the bad weights reach the engines (the last "
        "checkpoint is intact"
    )


@pytest.mark.timeout(900)
def test_a_killed_learner_rank_stops_the_run_naming_the_last_checkpoint_and_resume_continues(
    ray_local, tmp_path
):
    """SIGKILL learner rank 1 right after step 1's checkpoint: Trainer.run stops within seconds with a
    LearnerFailure naming the rank, its pid and the step-1 checkpoint; a new run with trainer.resume=auto (the
    default) continues from step 1 to the end."""
    run_dir = tmp_path / "cpu_tiny_test"
    trainer = make_trainer(tmp_path, "trainer.total_steps=3", "trainer.save_every_steps=1")
    pid = trainer.learner.processes[1]["pid"]
    save, killed_at = trainer.save, []

    def save_then_kill():
        save()
        if not killed_at:
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

    trainer.save = save_then_kill
    from grpo_lambda.learner.group import LearnerFailure

    with pytest.raises(LearnerFailure) as info:
        trainer.run()  # shuts down on the way out
    took = time.monotonic() - killed_at[0]
    message = str(info.value)
    assert message.startswith(f"learner rank 1 (pid {pid}, node ")
    assert (
        f"Last good checkpoint: {run_dir / 'checkpoints' / 'step_000001'}; run again with trainer.resume=auto"
        in (message)
    )
    assert took < 60, took  # the next step's generation and scoring, then the learner call fails at once
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]

    resumed = make_trainer(tmp_path, "trainer.total_steps=2", "trainer.save_every_steps=1")
    assert resumed.step_num == 1 and resumed.weight_sync.version == 1
    resumed.run()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


# ========== The driver and its checkpoints ==========================================================================
# Faults around checkpoints, injected for real (docs/faults.md):
#
# - the driver (`python -m grpo_lambda.train` in a subprocess) is SIGKILLed between checkpoints and again while it
#   writes one; `trainer.resume=auto` then continues, and every step's metrics and batches equal an uninterrupted run's;
#   nothing the killed driver left (Ray processes, a half-written step folder) stands in the way;
# - the checkpoint folder becomes full (a tiny tmpfs) or read-only (a read-only mount): the previous checkpoint stays
#   intact and loadable, the error names the folder and the cause, and the run stops or warns and goes on
#   (`trainer.on_checkpoint_error`).


REPO = Path(__file__).resolve().parents[2]
# A reward signal from a tiny random model (as in test_trainer.py), and the async pipeline (one batch in flight,
# recorded in each checkpoint): 4 steps, checkpoints at steps 2 and 4.
RUN_ARGS = [
    "experiment=cpu_tiny_test",
    "algorithm.entropy_coef=0.01",
    "data.arithmetic.max_operand=1",
    "model.max_response_tokens=12",
    "rollout.max_staleness=1",
    "trainer.total_steps=4",
    "trainer.save_every_steps=2",
    "trainer.export_final=false",
]
# Ray's agents outlive a killed driver's raylet by about a minute (leftovers.py); everything else goes at once.
RAY_AGENTS = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def wall_clock(key: str) -> bool:
    """Metrics that measure time (time/*, *_s such as learner/update_s, eval/time_s, verifier latencies, and
    rollout/tokens_per_s): everything else is deterministic on CPU with fixed seeds."""
    return key == "time" or key.startswith("time/") or key.endswith("_s")


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not wall_clock(k)} for row in rows]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def logged_steps(run: Path) -> list[int]:
    try:
        return [row["step"] for row in read_jsonl(run / "metrics.jsonl")]
    except json.JSONDecodeError:  # a line being written
        return []


def latest(run: Path) -> str | None:
    path = run / "checkpoints" / checkpoint.LATEST
    return path.read_text().strip() if path.exists() else None


class Driver:
    """`python -m grpo_lambda.train` with RUN_ARGS in a subprocess, its Ray in a temp dir of its own (Ray's unix
    sockets need a short path), its output in a log file."""

    def __init__(self, out: Path, ray_tmp: str, *extra: str):
        self.log = out.parent / f"{out.name}.log"
        self.log_file = self.log.open("a")
        self.log_file.write(f"\n=== {' '.join(extra)}\n")
        self.log_file.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_TMPDIR"] = ray_tmp
        cmd = [sys.executable, "-m", "grpo_lambda.train", *RUN_ARGS, f"trainer.output_dir={out}", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)

    def wait_until(self, condition, timeout_s: float, poll_s: float = 0.05) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the driver exited ({self.proc.returncode}) first:\n{self.output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s:\n{self.output()[-3000:]}")
            time.sleep(poll_s)

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log_file.close()

    def finish(self, timeout_s: float) -> str:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log_file.close()
        assert self.proc.returncode == 0, self.output()[-5000:]
        return self.output()

    def output(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log.read_text(errors="replace")


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (same process: psutil checks the start time; a zombie has ended)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def names(procs: list[psutil.Process]) -> set[str]:
    out = set()
    for p in procs:
        try:
            out.add(p.name())
        except psutil.NoSuchProcess:
            continue
    return out


def killed(driver: Driver, tree: list[psutil.Process]) -> None:
    """SIGKILL the driver; its Ray (`tree`: its descendants) goes with it (fate sharing), but for Ray's agents."""
    assert len(tree) >= 8, names(tree)  # gcs, raylet, agents, learner ranks, engine, verifier ...
    driver.kill()
    deadline = time.monotonic() + 30
    while names(alive(tree)) - RAY_AGENTS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not names(alive(tree)) - RAY_AGENTS, f"running 30 s after the driver was killed: {alive(tree)}"


def restart_reaps(driver: Driver, old_tree: list[psutil.Process], run: Path) -> None:
    """Once the restarted driver has started its Ray (it records its processes then), nothing of the killed
    driver's runs any more: the agents that Ray itself leaves for about a minute were ended at start-up."""
    record = run / leftovers.RECORD_FILE

    def recorded_by_new_driver() -> bool:
        try:
            return json.loads(record.read_text())["driver"]["pid"] == driver.proc.pid
        except (OSError, ValueError, KeyError):
            return False

    driver.wait_until(recorded_by_new_driver, timeout_s=300, poll_s=0.2)
    assert alive(old_tree) == [], f"left by the killed driver: {alive(old_tree)}"


@pytest.fixture(scope="module")
def ray_tmp():
    path = tempfile.mkdtemp(prefix="fk", dir="/tmp")  # short: Ray's unix sockets live under it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(1200)
def test_driver_killed_mid_run_and_mid_checkpoint_resumes_exactly(tmp_path, ray_tmp):
    """Uninterrupted run vs. a run whose driver is SIGKILLed twice: (a) after step 3 was logged (the checkpoint of
    step 2 complete, the batch of step 4 in flight), then, resumed, (b) while the checkpoint of step 4 is being
    written; resumed again, it finishes. Every step's deterministic metrics and batches.jsonl are identical."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    Driver(reference, ray_tmp).finish(timeout_s=400)
    run = interrupted / "cpu_tiny_test"

    # (a) between checkpoints
    driver = Driver(interrupted, ray_tmp)
    driver.wait_until(lambda: 1 in logged_steps(run), timeout_s=400)
    tree = driver.tree()  # every process is up by now
    driver.wait_until(lambda: 3 in logged_steps(run), timeout_s=120, poll_s=0.005)
    killed(driver, tree)
    assert logged_steps(run) == [1, 2, 3] and latest(run) == "step_000002"
    assert not checkpoint.step_dir(run, 4).exists()

    # resumed, then (b) killed while the checkpoint of step 4 is written: its learner part has begun, driver.json
    # (written once every rank has finished) is not there
    driver = Driver(interrupted, ray_tmp, "trainer.resume=auto")
    restart_reaps(driver, tree, run)
    driver.wait_until(lambda: 3 in logged_steps(run), timeout_s=400)
    tree = driver.tree()
    partial = checkpoint.step_dir(run, 4)
    driver.wait_until(lambda: (partial / "learner").exists(), timeout_s=120, poll_s=0.001)
    killed(driver, tree)
    assert f"resumed from {checkpoint.step_dir(run, 2)} at step 2" in driver.output()
    assert (partial / "learner").is_dir() and not (partial / checkpoint.DRIVER_STATE).exists(), (
        f"the kill did not land while the checkpoint was written: {sorted(map(str, partial.rglob('*')))}"
    )
    assert latest(run) == "step_000002" and logged_steps(run) == [1, 2, 3, 4]

    driver = Driver(interrupted, ray_tmp, "trainer.resume=auto")
    restart_reaps(driver, tree, run)
    output = driver.finish(timeout_s=400)
    assert f"resumed from {checkpoint.step_dir(run, 2)} at step 2" in output

    # the half-written folder was replaced by a complete checkpoint; keep_checkpoints=1 pruned step 2 after it
    assert latest(run) == "step_000004"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000004"]
    assert sorted(p.name for p in (partial / "learner").iterdir()) == sorted(
        p.name for p in (checkpoint.step_dir(reference / "cpu_tiny_test", 4) / "learner").iterdir()
    )
    full = read_jsonl(reference / "cpu_tiny_test" / "metrics.jsonl")
    resumed = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [m["step"] for m in full] == [1, 2, 3, 4]
    assert [m["rollout/staleness_max"] for m in full] == [0, 1, 1, 1]  # batches were in flight at each kill
    for want, got in zip(deterministic(full), deterministic(resumed)):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), want["step"]
    assert read_jsonl(run / "batches.jsonl") == read_jsonl(reference / "cpu_tiny_test" / "batches.jsonl")


# ------------------------------------------------------------------------------------------ checkpoint writes
class CheckpointFolder:
    """The run's checkpoints/ on a filesystem the test controls: a tmpfs mount that is made full (remounted to its
    current use plus a little) or read-only (remounted ro). Where mounting is refused (no CAP_SYS_ADMIN), the
    learner ranks get an RLIMIT_FSIZE instead (EFBIG), for both cases; not root, the folder is also chmod'ed
    read-only. `causes` are the error texts each mechanism produces."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self.mounted = self._mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder))
        self.trainer = None

    @staticmethod
    def _mount(*args: str) -> bool:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0

    def full(self) -> str:
        """Room for a few KiB more; returns the expected cause."""
        if self.mounted:
            used = shutil.disk_usage(self.folder).used
            assert self._mount("-o", f"remount,size={used + 64 * 1024}", str(self.folder))
            return "[Errno 28] No space left on device"
        self._learner_fsize(64 * 1024)
        return "[Errno 27] File too large"

    def read_only(self) -> str:
        if self.mounted:
            assert self._mount("-o", "remount,ro", str(self.folder))
            return "[Errno 30] Read-only file system"
        if os.geteuid() != 0:
            self.folder.chmod(0o555)
            return "[Errno 13] Permission denied"
        self._learner_fsize(64 * 1024)
        return "[Errno 27] File too large"

    def writable(self) -> None:
        if self.mounted:
            assert self._mount("-o", "remount,rw,size=64m", str(self.folder))
        else:
            self.folder.chmod(0o755)
            self._learner_fsize(resource.RLIM_INFINITY)

    def _learner_fsize(self, limit: int) -> None:
        import ray

        def set_limit(_actor, limit):
            import resource
            import signal

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        ray.get([a.__ray_call__.remote(set_limit, limit) for a in self.trainer.learner.group.actors])

    def close(self) -> None:
        if self.mounted and subprocess.run(["umount", str(self.folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)  # busy: detach it now


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.timeout(600)
def test_a_checkpoint_that_cannot_be_written_leaves_the_last_good_one(ray_local, tmp_path, capsys):
    """Step 1's checkpoint is written; step 2's meets a full disk (stop: CheckpointError naming folder, cause and
    the last good checkpoint), step 3's a read-only folder (warn: the run goes on). Both partial folders are gone,
    step 1's files are untouched, keep_checkpoints=1 pruned nothing, the learner ranks are still in step (training
    goes on), and the last good checkpoint loads back. With room again, step 4's checkpoint is written and only
    then is step 1's pruned; the failures are counted in `checkpoint/failed_total`."""
    from grpo_lambda.trainer import Trainer

    folder = CheckpointFolder(tmp_path / "cpu_tiny_test" / "checkpoints")
    trainer = None
    try:
        cfg = load_config(["experiment=cpu_tiny_test", f"trainer.output_dir={tmp_path}", "trainer.keep_checkpoints=1",
                           "trainer.total_steps=5", "trainer.export_final=false", "trainer.eval_every_steps=0"])  # fmt: skip
        assert cfg.trainer.on_checkpoint_error == "stop"  # the default
        trainer = folder.trainer = Trainer(cfg)
        first = checkpoint.step_dir(cfg.run_dir, 1)
        trainer.step()
        trainer.save()
        good, weights = digest(first), trainer.learner.param_checksums()[0]

        cause = folder.full()
        trainer.step()
        with pytest.raises(checkpoint.CheckpointError) as stopped:
            trainer.save()
        message = str(stopped.value)
        assert message.startswith(
            f"checkpoint at step 2 could not be written to {checkpoint.step_dir(cfg.run_dir, 2)}: {cause}"
        ), message
        assert message.endswith(f"; the last good checkpoint is {first}"), message

        trainer.cfg.trainer.on_checkpoint_error = "warn"
        cause = folder.read_only()
        trainer.step()
        capsys.readouterr()
        trainer.save()  # warns, does not raise
        warning = capsys.readouterr().err
        assert (
            f"WARNING: checkpoint at step 3 could not be written to {checkpoint.step_dir(cfg.run_dir, 3)}: {cause}"
            in (warning)
        ), warning
        assert "going on (trainer.on_checkpoint_error=warn)" in warning
        assert trainer.checkpoint_failures == 1

        assert sorted(p.name for p in folder.folder.glob("step_*")) == ["step_000001"]  # no partial folder
        assert latest(cfg.run_dir) == "step_000001" and digest(first) == good
        assert (
            len(set(trainer.learner.param_checksums())) == 1
        )  # the ranks agree: no collective was left half-done
        trainer.learner.load_checkpoint(str(first / "learner"), "model")  # the last good checkpoint loads
        assert trainer.learner.param_checksums()[0] == weights

        folder.writable()
        trainer.step()
        trainer.save()
        assert latest(cfg.run_dir) == "step_000004"
        assert sorted(p.name for p in folder.folder.glob("step_*")) == ["step_000004"]  # pruned only now
        assert checkpoint.load_driver_state(checkpoint.step_dir(cfg.run_dir, 4))["checkpoint_failures"] == 1
        trainer.run()  # step 5 through the run loop: the failure count is a metric; shuts the trainer down
        trainer = None
        (step5,) = read_jsonl(cfg.run_dir / "metrics.jsonl")
        assert step5["step"] == 5 and step5["checkpoint/failed_total"] == 1
    finally:
        if trainer is not None:
            trainer.shutdown()
        folder.close()


# ========== Bad data ================================================================================================
# Bad data, end to end: `python -m grpo_lambda.train` on a malformed JSONL file stops with one line naming file:line,
# exit status 2, before Ray starts (no Ray session folder under the RAY_TMPDIR it was given, no Ray log line).
# The loader's every case (malformed JSON, missing or empty field, wrong type, empty file, not UTF-8, missing file)
# is unit-tested in tests/unit/test_data.py.


@pytest.mark.timeout(300)
def test_a_malformed_line_stops_the_run_naming_file_and_line_before_ray(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    row = {"problem": "What is 1 + 1?", "answer": "2"}
    lines = [json.dumps({"id": f"r{i}", **row}) for i in range(2)] + [
        '{"id": "r2", "problem": "What is 2 + 2?"'
    ]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "test.jsonl").write_text(json.dumps({"id": "e0", **row}) + "\n", encoding="utf-8")
    ray_tmp = tmp_path / "ray"  # where a Ray started by this run would put its session folder
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "HYDRA_FULL_ERROR": "0"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "grpo_lambda.train", "experiment=cpu_tiny_test", "data=gsm8k",
         f"data.data_dir={data}", "data.train_files=[train.jsonl]", "data.eval_files=[test.jsonl]",
         f"trainer.output_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, timeout=280, env=env,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Data error: ")]
    assert errors == [
        f"Data error: {data / 'train.jsonl'}:3: invalid JSON (Expecting ',' delimiter at column 41): each line "
        'must be one JSON object like {"id": "q1", "problem": "What is 2+3?", "answer": "5"}'
    ], output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not ray_tmp.exists(), f"Ray started ({sorted(p.name for p in ray_tmp.iterdir())})"
    assert "Ray instance" not in output and "ray.init" not in output
    print(f"failed in {wall:.1f} s")
