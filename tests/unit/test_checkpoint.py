"""Run checkpoints on disk (grpo_lambda/checkpoint.py): replacing what a killed run left, pruning, write failures."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pytest

from grpo_lambda import checkpoint
from grpo_lambda.config import ConfigError, load_config


def complete(run_dir, step: int) -> None:
    """A committed checkpoint of `step` (stand-in learner files)."""
    folder = checkpoint.begin(run_dir, step)
    (folder / "learner" / "model").mkdir(parents=True)
    (folder / "learner" / "model" / "states.pt").write_bytes(b"w" * 16)
    checkpoint.commit(run_dir, step, {"step": step})


def half_written(run_dir, step: int, driver_state: bool = False) -> None:
    """What a driver killed while saving `step` leaves: learner files, no driver.json (unless `driver_state`:
    killed between driver.json and `latest`)."""
    folder = checkpoint.step_dir(run_dir, step)
    (folder / "learner" / "model.tmp").mkdir(parents=True)
    (folder / "learner" / "model.tmp" / "partial.pt").write_bytes(b"p")
    if driver_state:
        (folder / checkpoint.DRIVER_STATE).write_text(json.dumps({"step": step}))


def steps_on_disk(run_dir) -> list[str]:
    return sorted(p.name for p in checkpoint.checkpoint_root(run_dir).glob("step_*"))


def test_a_half_written_folder_is_ignored_by_resume_and_replaced_when_the_step_is_saved_again(tmp_path):
    complete(tmp_path, 2)
    half_written(tmp_path, 4)
    assert checkpoint.find_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 2)
    folder = checkpoint.begin(tmp_path, 4)
    assert not folder.exists()  # no partial file can be mistaken for part of the new checkpoint
    assert (checkpoint.step_dir(tmp_path, 2) / checkpoint.DRIVER_STATE).is_file()
    complete(tmp_path, 4)
    assert checkpoint.find_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 4)


def test_pruning_counts_only_checkpoints_up_to_the_one_committed(tmp_path):
    """A run resumed from step 2 after a kill between driver.json and `latest` of step 6: that stale step_6 looks
    complete, but keep=1 at step 4 must keep step_4 (the one `latest` names), not delete it."""
    complete(tmp_path, 2)
    half_written(tmp_path, 6, driver_state=True)
    complete(tmp_path, 4)  # keep=0 in complete(): prune explicitly below
    checkpoint.commit(tmp_path, 4, {"step": 4}, keep=1)
    assert steps_on_disk(tmp_path) == ["step_000004", "step_000006"]
    assert checkpoint.find_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 4)
    complete(tmp_path, 6)  # reaching step 6 again replaces the stale folder
    assert checkpoint.load_driver_state(checkpoint.step_dir(tmp_path, 6)) == {"step": 6}


def test_begin_moves_latest_back_before_rewriting_the_folder_it_names(tmp_path):
    """Resuming from an explicit older checkpoint of the same run and saving the step `latest` names: `latest`
    first goes back to the newest complete checkpoint before it, so a kill during the rewrite resumes from there."""
    complete(tmp_path, 2)
    complete(tmp_path, 4)
    checkpoint.begin(tmp_path, 4)
    assert checkpoint.find_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 2)
    checkpoint.begin(
        tmp_path, 2
    )  # nothing complete before step 2: no `latest` at all (resume=auto starts afresh)
    assert checkpoint.latest_folder(tmp_path) is None and checkpoint.find_resume(tmp_path, "auto") is None


def test_discard_removes_a_failed_save_but_never_the_latest(tmp_path):
    complete(tmp_path, 2)
    half_written(tmp_path, 4)
    checkpoint.discard(tmp_path, 4)
    checkpoint.discard(tmp_path, 2)  # named by latest: left alone
    assert steps_on_disk(tmp_path) == ["step_000002"]
    assert (checkpoint.step_dir(tmp_path, 2) / "learner" / "model" / "states.pt").read_bytes() == b"w" * 16


def test_write_error_finds_the_os_error_behind_a_ray_task_error():
    full = OSError(errno.ENOSPC, "No space left on device")
    ray_like = RuntimeError("task failed")
    ray_like.cause = checkpoint.CheckpointWriteError("[Errno 28] No space left on device on learner rank 1")
    chained = RuntimeError("outer")
    chained.__cause__ = full
    assert checkpoint.write_error(full) is full
    assert checkpoint.write_error(chained) is full
    assert checkpoint.write_error(ray_like) is ray_like.cause
    assert checkpoint.write_error(ValueError("a bug")) is None


def test_write_error_cause_names_the_errno_or_asks_the_filesystem(tmp_path, monkeypatch):
    assert (
        checkpoint.write_error_cause(OSError(errno.EROFS, "x"), tmp_path)
        == "[Errno 30] Read-only file system"
    )
    # torch.save's own errors carry no errno: the filesystem tells
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    real = os.statvfs(tmp_path)

    def fake_statvfs(flag=0, bavail=real.f_bavail):
        return lambda path: SimpleNamespace(f_flag=flag, f_bavail=bavail, f_frsize=real.f_frsize)

    monkeypatch.setattr(checkpoint.os, "statvfs", fake_statvfs(flag=os.ST_RDONLY))
    assert (
        checkpoint.write_error_cause(torch_error, tmp_path / "a" / "b") == "[Errno 30] Read-only file system"
    )
    monkeypatch.setattr(checkpoint.os, "statvfs", fake_statvfs(bavail=0))
    assert checkpoint.write_error_cause(torch_error, tmp_path).startswith(
        "[Errno 28] No space left on device"
    )
    monkeypatch.setattr(checkpoint.os, "statvfs", fake_statvfs())
    import resource

    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY:
        assert checkpoint.write_error_cause(torch_error, tmp_path) == (
            "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
        )


def test_failure_message_names_step_folder_cause_and_last_good_checkpoint(tmp_path):
    message = checkpoint.failure_message(tmp_path, 4, "[Errno 28] No space left on device")
    assert message == (
        f"checkpoint at step 4 could not be written to {checkpoint.step_dir(tmp_path, 4)}: [Errno 28] No space "
        "left on device; the last good checkpoint is none (no checkpoint written yet)"
    )
    complete(tmp_path, 2)
    assert checkpoint.failure_message(tmp_path, 4, "x").endswith(
        f"the last good checkpoint is {checkpoint.step_dir(tmp_path, 2)}"
    )


def test_on_checkpoint_error_is_stop_by_default_and_checked_at_start_up():
    assert load_config(["experiment=cpu_tiny_test"]).trainer.on_checkpoint_error == "stop"
    assert (
        load_config(
            ["experiment=cpu_tiny_test", "trainer.on_checkpoint_error=warn"]
        ).trainer.on_checkpoint_error
        == "warn"
    )
    with pytest.raises(
        ConfigError, match=r"trainer\.on_checkpoint_error='continue' is not one of: stop, warn"
    ):
        load_config(["experiment=cpu_tiny_test", "trainer.on_checkpoint_error=continue"])
