"""Tracker: console line, metrics.jsonl, reward plot, summary, resume truncation, wandb failure tolerance;
and the small utils (atomic writes, Timer)."""

from __future__ import annotations

import io
import json
import math
import sys
import time
import types

import pytest

from grpo_lambda.config import LoggerConfig, WandbConfig
from grpo_lambda.tracking import Tracker, moving_average, summarize
from grpo_lambda.utils import Timer, atomic_write_json, atomic_write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(step: int) -> dict[str, float]:
    return {
        "reward/mean": 0.1 * step,
        "learner/loss": 0.5 / step,
        "learner/kl": 1e-5 * step,
        "learner/clip_frac": 0.01,
        "time/step_s": 10.0,
        "time/generate_s": 6.0,
        "time/learn_s": 3.0,
        "other/not_on_console": 1.0,
    }


def logger(mode: str = "disabled", **kw) -> LoggerConfig:
    return LoggerConfig(wandb=WandbConfig(mode=mode), **kw)


def test_jsonl_console_plot_summary(tmp_path):
    out = io.StringIO()
    tr = Tracker(tmp_path / "run", logger(), config={"a": 1}, total_steps=4, stream=out)
    for step in (1, 2, 3):
        tr.log(step, metrics(step))
    summary = tr.finish()

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["reward/mean"] == pytest.approx(0.3) and "time" in rows[0]

    console = out.getvalue().splitlines()
    assert console[0].startswith("step 1/4 | reward/mean 0.1 | learner/loss 0.5 | learner/kl 1.000e-05")
    assert "eta 10s" in console[2] and "other/not_on_console" not in out.getvalue()
    assert "reward/mean first 0.1 | last 0.3 | best 0.3 (step 3)" in out.getvalue()

    png = (tmp_path / "run" / "reward_curve.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert (tmp_path / "run" / "config.yaml").read_text().strip() == "a: 1"
    assert summary["reward_best_step"] == 3 and summary["time_total_s"] == 30.0
    assert summary["time_breakdown_s"] == {"generate": 18.0, "learn": 9.0, "other": 3.0}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["reward_last"] == pytest.approx(0.3)
    assert tr.finish() is summary  # idempotent


def test_console_every_n_steps(tmp_path):
    out = io.StringIO()
    tr = Tracker(tmp_path, logger(plot=False), total_steps=5, console_every_steps=2, stream=out)
    for step in range(1, 6):
        tr.log(step, {"reward/mean": 0.5})
    tr.finish()
    assert [line.split(" |")[0] for line in out.getvalue().splitlines()[:3]] == [
        "step 2/5",
        "step 4/5",
        "step 5/5",
    ]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


def test_non_finite_values_and_bad_metric(tmp_path):
    tr = Tracker(tmp_path, logger(console=False, plot=False))
    tr.log(1, {"learner/loss": float("nan"), "reward/mean": 1})
    with pytest.raises(TypeError, match="metric 'x'='abc' is not a number"):
        tr.log(2, {"x": "abc"})
    tr.finish()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["learner/loss"] is None and row["reward/mean"] == 1.0


def test_resume_drops_later_steps_and_reloads_history(tmp_path):
    tr = Tracker(tmp_path, logger(console=False, plot=False))
    for step in (1, 2, 3, 4):
        tr.log(step, metrics(step))
    tr.finish()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "reward/me')  # a write cut short by a crash
    with pytest.warns(UserWarning, match=r"metrics.jsonl:5: unreadable"):
        tr2 = Tracker(tmp_path, logger(console=False, plot=False), start_step=2)
    assert [s for s, _ in tr2.history] == [1, 2]
    tr2.log(3, metrics(3))
    summary = tr2.finish()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert summary["reward_first"] == pytest.approx(0.1) and summary["steps_logged"] == 3


def test_fresh_start_truncates_old_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval/acc": 1.0}\n{"step": 7, "reward/mean": 1.0}\n')
    tr = Tracker(tmp_path, logger(console=False, plot=False))
    tr.log(1, {"reward/mean": 0.0})
    tr.finish()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


class _BrokenWandb(types.ModuleType):
    """Stands in for the wandb module around the Tracker: init works, log raises."""

    def __init__(self, fail_init: bool):
        super().__init__("wandb")
        self.fail_init, self.logged = fail_init, 0

    def init(self, **kwargs):
        if self.fail_init:
            raise RuntimeError("no network")
        self.run = types.SimpleNamespace(summary={})

    def log(self, values, step):
        self.logged += 1
        raise OSError("disk full")

    def finish(self):
        pass


@pytest.mark.parametrize("fail_init", [True, False])
def test_training_survives_wandb_failure(tmp_path, monkeypatch, capsys, fail_init):
    fake = _BrokenWandb(fail_init)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.warns(RuntimeWarning, match="wandb failed") as warned:
        tr = Tracker(tmp_path, logger("offline", console=False, plot=False))
        for step in (1, 2, 3):
            tr.log(step, {"reward/mean": step})
        tr.finish()
    assert len(warned) == 1  # warned once, then wandb is off
    assert fake.logged == (0 if fail_init else 1)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert capsys.readouterr().err.count("wandb failed") == 1


def test_for_run(tmp_path):
    from grpo_lambda.config import load_config

    cfg = load_config(["experiment=cpu_tiny_test", f"trainer.output_dir={tmp_path}", "logger.plot=false",
                       "logger.console=false"])  # fmt: skip
    tr = Tracker.for_run(cfg)
    assert (
        tr.logger is cfg.logger
        and tr.total_steps == cfg.trainer.total_steps
        and tr.run_name == "cpu_tiny_test"
    )
    tr.log(1, {"reward/mean": 0.5})
    tr.finish()
    run = tmp_path / "cpu_tiny_test"
    assert (run / "metrics.jsonl").is_file() and "lam: 0.99" in (run / "config.yaml").read_text()
    assert not (run / "reward_curve.png").exists() and not (run / "wandb").exists()


def test_logged_other_time_is_kept():
    s = summarize([(1, {"time/step_s": 10.0, "time/learn_s": 6.0, "time/other_s": 4.0})])
    assert s["time_breakdown_s"] == {"learn": 6.0, "other": 4.0}


def test_summary_and_moving_average_helpers():
    assert moving_average([1, 2, 3, 4], 2) == [1.0, 1.5, 2.5, 3.5]
    assert summarize([]) == {"steps_logged": 0}
    s = summarize([(1, {"reward/mean": math.nan}), (2, {"reward/mean": 0.2})])
    assert s["reward_first"] == 0.2 and "time_total_s" not in s


def test_atomic_writes_and_timer(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello" and list(path.parent.iterdir()) == [path]
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "c.json", {"x": float("nan")})
    assert not (tmp_path / "c.json").exists() and len(list(tmp_path.glob(".c.json*"))) == 0

    timer = Timer()
    for _ in range(2):
        with timer("generate"):
            time.sleep(0.01)
    with pytest.raises(KeyError):
        with timer("learn"):
            raise KeyError("boom")
    with timer("sleep", record=False):  # a phase that costs nothing here gets no metric
        pass
    m = timer.metrics()
    assert set(m) == {"time/generate_s", "time/learn_s"} and m["time/generate_s"] >= 0.02


@pytest.mark.timeout(120)
def test_wandb_offline_for_real(tmp_path):
    """Real wandb in offline mode (a local wandb-core process, ~1-3 s): files land in run_dir/wandb."""
    tr = Tracker(
        tmp_path,
        logger("offline", console=False, plot=False),
        config={"algorithm": {"lam": 0.99}},
        run_name="t",
    )
    tr.log(1, {"reward/mean": 0.25})
    tr.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
