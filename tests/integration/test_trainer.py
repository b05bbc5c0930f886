"""End to end with real Ray, real vLLM (CPU), real DeepSpeed (2 ranks, gloo) and a tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from grpo_lambda.config import load_config

pytestmark = [pytest.mark.integration]

# A random tiny model rarely writes the right sum; an entropy bonus gives every step a real gradient, and sums of
# 0/1 operands make a lucky last digit right often enough that some groups carry reward signal.
BASE = [
    "experiment=cpu_tiny_test",
    "algorithm.entropy_coef=0.01",
    "data.arithmetic.max_operand=1",
    "model.max_response_tokens=12",
    "rollout.samples_per_prompt=4",
    "data.prompts_per_step=2",
    "learner.mini_batch_samples=4",  # two optimiser steps per training step: old_logp is really θ_old
    "learner.micro_batch_samples=1",
    "eval.max_prompts_per_dataset=4",
]


def make_trainer(tmp_path, *overrides):
    from grpo_lambda.trainer import Trainer

    cfg = load_config([*BASE, f"trainer.output_dir={tmp_path}", *overrides])
    return Trainer(cfg)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_steps_run_sync_and_resume_exactly(ray_local, tmp_path):
    """Three uninterrupted steps vs two steps + resume=auto + one step: the third step's metrics are identical.
    Along the way: finite losses, identical learner ranks, engine weights checked equal to the learner's after
    every sync (rollout.sync_check=true), checkpoints and the run's files."""
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"

    trainer = make_trainer(full_dir, "trainer.total_steps=3", "trainer.save_every_steps=0")
    history = []
    try:
        for _ in range(3):
            metrics = trainer.step()
            history.append(metrics)
            assert math.isfinite(metrics["learner/loss"])
            assert metrics["learner/grad_norm"] > 0  # the entropy bonus alone makes it non-zero
            # fp32 on both sides: the engine samples from exactly the learner's weights (stale weights would
            # show here from step 2 on as a log-prob gap of order 1e-2 or more)
            assert metrics["rollout/logp_abs_diff_max"] < 1e-3
            checksums = trainer.learner.param_checksums()
            assert len(set(checksums)) == 1, f"learner ranks diverged: {checksums}"
            # every phase of the step has its own time (2 updates per step: θ_old needs its own forward; β > 0:
            # the reference forward); no engine sleep/wake on a CPU, and nothing large left unaccounted
            assert {k for k in metrics if k.startswith("time/")} == {
                f"time/{p}_s"
                for p in ("generate", "reward", "old_logp", "ref_logp", "update", "sync", "step", "other",
                          "engine_idle")  # measured on the engine, not a phase of the driver
            }  # fmt: skip
            assert metrics["rollout/staleness_max"] == 0  # synchronous: sampled by the learner's own weights
            # the per-token credit of the step (GRPO-λ `both`, λ = 0.99: early tokens weigh more than late ones)
            assert metrics["credit/decile_0"] > metrics["credit/decile_9"] > 0
            assert metrics["credit/first_last_ratio"] > 1 and 0 < metrics["credit/effective_token_frac"] <= 1
            assert metrics["time/other_s"] < 0.25 * metrics["time/step_s"]
        assert trainer.weight_sync.version == 3
    finally:
        trainer.shutdown()

    first = make_trainer(split_dir, "trainer.total_steps=2", "trainer.save_every_steps=2")
    first.run()  # runs 2 steps, saves, finishes the tracker (PNG + summary) and shuts down
    run_dir = split_dir / "cpu_tiny_test"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert (run_dir / "reward_curve.png").stat().st_size > 0
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2]
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["algorithm"]["behaviour_is"] == "none"  # auto, on-policy: GRPO's loss bit for bit

    resumed = make_trainer(split_dir, "trainer.total_steps=3", "trainer.save_every_steps=0")
    try:
        # the checkpoint's weights reached the engine, as the version they had (counters resume exactly)
        assert resumed.step_num == 2 and resumed.weight_sync.version == 2
        third = resumed.step()
    finally:
        resumed.shutdown()
    for key in ("reward/mean", "response/length_mean", "learner/loss", "learner/pg_loss", "learner/grad_norm",
                "learner/entropy"):  # fmt: skip
        assert third[key] == pytest.approx(history[2][key], rel=1e-4, abs=1e-6), key


@pytest.mark.timeout(600)
def test_async_rollout_keeps_staleness_bounded_and_resumes_with_samples_in_flight(
    ray_local, tmp_path, capsys
):
    """rollout.max_staleness=1: batch s+1 is generated while step s trains, so from step 2 on every sample is one
    version old; TIS corrects for it (algorithm.behaviour_is=auto resolves to tis, says so at start-up and records
    it in config.yaml; its metrics are logged every step). Four uninterrupted steps vs two + resume=auto + two: the
    same prompts trained at each step (batches.jsonl), the same weights versions, and identical metrics after the
    resume."""
    common = ("rollout.max_staleness=1", "learner.micro_batch_tokens=64")
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    make_trainer(full_dir, *common, "trainer.total_steps=4", "trainer.save_every_steps=0").run()
    assert "algorithm.behaviour_is=auto -> tis" in capsys.readouterr().out
    recorded = yaml.safe_load((full_dir / "cpu_tiny_test/config.yaml").read_text())
    assert (recorded["algorithm"]["behaviour_is"], recorded["rollout"]["max_staleness"]) == ("tis", 1)
    make_trainer(split_dir, *common, "trainer.total_steps=2", "trainer.save_every_steps=2").run()
    driver = json.loads((split_dir / "cpu_tiny_test/checkpoints/step_000002/driver.json").read_text())
    assert [b["step"] for b in driver["in_flight"]] == [2]  # step 3's batch was generated before the save
    make_trainer(split_dir, *common, "trainer.total_steps=4", "trainer.save_every_steps=0").run()

    def batches(run):
        return [json.loads(line) for line in (run / "cpu_tiny_test/batches.jsonl").read_text().splitlines()]

    assert batches(split_dir) == batches(full_dir)
    assert [b["step"] for b in batches(full_dir)] == [1, 2, 3, 4]
    full, split = read_metrics(full_dir / "cpu_tiny_test"), read_metrics(split_dir / "cpu_tiny_test")
    assert [m["rollout/staleness_max"] for m in full] == [0, 1, 1, 1]
    assert [m["rollout/weights_version"] for m in split] == [1, 2, 3, 4]
    for m in full:
        assert "time/learner_wait_s" in m and "time/generate_s" not in m and m["rollout/generate_s"] > 0
        assert m["learner/is_weight_mean"] > 0 and m["rollout/dropped_stale"] == 0
        assert {"learner/is_weight_max", "learner/is_truncated_frac"} <= m.keys()
    for key in ("reward/mean", "response/length_mean", "learner/loss", "learner/grad_norm",
                "learner/is_weight_mean", "rollout/staleness_mean"):  # fmt: skip
        assert [m[key] for m in split[2:]] == pytest.approx([m[key] for m in full[2:]], rel=1e-4, abs=1e-6), (
            key
        )


@pytest.mark.timeout(400)
def test_zero3_and_zero1_run(ray_local, tmp_path):
    """ZeRO-3 streams its gathered weights by broadcast (the CPU default) to a tensor-parallel engine (2 workers,
    sync-group ranks 1 and 2); ZeRO-1 goes through the object store. Both read back equal (sync_check)."""
    for stage, sync, tp in (("zero3", "broadcast", 2), ("zero1", "object_store", 1)):
        trainer = make_trainer(tmp_path / stage, f"learner={stage}", "trainer.total_steps=1",
                               f"rollout.weight_sync={sync}", f"rollout.tensor_parallel_size={tp}")  # fmt: skip
        try:
            assert trainer.weight_sync.mode == sync
            metrics = trainer.step()
            assert math.isfinite(metrics["learner/loss"]) and metrics["learner/grad_norm"] > 0
            assert len(set(trainer.learner.param_checksums())) == 1
        finally:
            trainer.shutdown()


@pytest.mark.timeout(300)
def test_lora_syncs_merged_weights(ray_local, tmp_path):
    """LoRA adapters train; the engine gets W + ΔW and rollout.sync_check reads it back equal."""
    pytest.importorskip("peft")
    trainer = make_trainer(tmp_path, "model.lora.rank=4", "learner.lr=1e-2", "trainer.total_steps=2")
    try:
        for _ in range(2):
            metrics = trainer.step()  # sync_check=true in cpu_tiny_test: raises if the engine differs
            assert math.isfinite(metrics["learner/loss"]) and metrics["learner/grad_norm"] > 0
        assert metrics["rollout/logp_abs_diff_max"] < 1e-3  # the engine samples from the merged weights
    finally:
        trainer.shutdown()


@pytest.mark.timeout(60)
def test_get_fail_fast_raises_the_first_error_without_waiting_for_the_rest(ray_local):
    """A broadcast whose receiver fails must not wait out the sender's timeout."""
    import time

    import ray

    from grpo_lambda.distributed import get_fail_fast

    @ray.remote
    def slow():
        time.sleep(30)

    @ray.remote
    def broken():
        raise ValueError("engine failed")

    slow_refs = [slow.remote(), slow.remote()]
    try:
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match="engine failed"):
            get_fail_fast([slow_refs[0], broken.remote()], timeout_s=40)
        assert time.perf_counter() - t0 < 20
        with pytest.raises(ray.exceptions.GetTimeoutError):
            get_fail_fast([slow_refs[1]], timeout_s=0.5)
    finally:
        for ref in slow_refs:
            ray.cancel(ref, force=True)


@pytest.mark.timeout(300)
def test_a_dead_engine_fails_the_broadcast_sync_at_once_not_after_the_timeout(ray_local, tmp_path):
    """An engine that dies before a broadcast sync, with no restarts allowed (rollout.max_engine_restarts=0;
    replacement: tests/integration/test_faults.py): the driver raises within seconds, far below
    rollout.sync_timeout_s, instead of leaving learner rank 0 blocked in the collective."""
    import time

    import ray

    from grpo_lambda.rollout.group import EngineFailure

    trainer = make_trainer(tmp_path, "rollout.sync_timeout_s=120", "rollout.sync_check=false",
                           "rollout.max_engine_restarts=0")  # fmt: skip
    try:
        assert trainer.weight_sync.mode == "broadcast"
        trainer.weight_sync.push()  # a healthy sync first
        ray.kill(trainer.rollout.engines[0])
        t0 = time.perf_counter()
        with pytest.raises(EngineFailure, match="died during the weight sync"):
            trainer.weight_sync.push()
        assert time.perf_counter() - t0 < 60
        # learner rank 0 is not left blocked in the broadcast either: gloo saw the peer go and raised
        ray.get(trainer.learner.group.call_async("param_checksum"), timeout=60)
    finally:
        trainer.shutdown()
