"""Run logging: one console line per step, ``metrics.jsonl``, wandb (offline by default) and a reward plot.

Every metric has a stable name (``reward/mean``, ``learner/loss``, ``time/step_s`` ...) and goes to every
sink. Phase timings are ``time/<phase>_s`` (``generate``, ``reward``, ``old_logp``, ``update``, ``sync`` ...)
beside the whole step ``time/step_s``; :meth:`Tracker.finish` reports their breakdown. wandb is imported lazily and can
never stop training: a wandb failure prints one warning and turns wandb off for the rest of the run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from grpo_lambda.config.schema import LoggerConfig
from grpo_lambda.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

METRICS_FILE = "metrics.jsonl"
BATCHES_FILE = "batches.jsonl"  # per step: the prompt ids trained on and their weights versions
SUMMARY_FILE = "summary.json"
PLOT_FILE = "reward_curve.png"
CONFIG_FILE = "config.yaml"
WANDB_ID_FILE = "wandb_id.txt"
REWARD_KEY = "reward/mean"
STEP_TIME_KEY = "time/step_s"
NOT_DRIVER_PHASES = ("time/engine_idle_s",)  # measured on the engines, overlapping the driver's phases


class Tracker:
    """Sends each step's metrics to the console, ``run_dir/metrics.jsonl`` and wandb, as ``logger`` says.

    Args:
        run_dir: the run folder (created). ``config.yaml`` is written there when ``config`` is given.
        logger: the run's ``logger`` section (sinks, wandb settings, console keys); default: ``LoggerConfig()``.
        config: the run's Config (or a plain dict) for the record and wandb's config panel.
        run_name: wandb's run name and the plot title (default: the folder's name).
        total_steps: shown as ``step 3/30`` with an ETA.
        start_step: when resuming from a checkpoint at this step, metrics.jsonl lines of later steps (an
            interrupted attempt) are dropped and earlier ones reload into the history; 0 starts afresh.
        console_every_steps: print the console line every n steps (and at ``total_steps``); the other
            sinks get every step.
    """

    def __init__(
        self,
        run_dir: str | Path,
        logger: LoggerConfig | None = None,
        *,
        config: Any = None,
        run_name: str | None = None,
        total_steps: int | None = None,
        start_step: int = 0,
        console_every_steps: int = 1,
        stream: TextIO | None = None,
    ) -> None:
        self.logger = logger = logger if logger is not None else LoggerConfig()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console_every_steps = max(1, console_every_steps)
        self.total_steps = total_steps
        self.run_name = run_name or self.run_dir.name
        self.stream = stream
        self.history: list[tuple[int, dict[str, float]]] = []
        self._start_time = time.time()
        self._summary: dict[str, Any] | None = None
        self._wandb: Any = None
        self._wandb_warned = False
        cfg_dict = _to_dict(config)
        if cfg_dict is not None:
            from omegaconf import OmegaConf

            atomic_write_text(self.run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg_dict)))
        self._jsonl: TextIO | None = None
        self._batches: TextIO | None = None
        if logger.jsonl:
            self._reload_history(start_step)
            self._jsonl = (self.run_dir / METRICS_FILE).open("a", encoding="utf-8")
            _keep_steps(self.run_dir / BATCHES_FILE, start_step)
            self._batches = (self.run_dir / BATCHES_FILE).open("a", encoding="utf-8")
        if logger.wandb.mode != "disabled":
            self._init_wandb(cfg_dict)

    @classmethod
    def for_run(cls, cfg: Any, start_step: int = 0) -> Tracker:
        """The Tracker of a training run: ``cfg.run_dir``, ``cfg.logger``, the run's name, length and log cadence."""
        t = cfg.trainer
        return cls(cfg.run_dir, cfg.logger, config=cfg, run_name=t.run_name, total_steps=t.total_steps,
                   start_step=start_step, console_every_steps=t.log_every_steps)  # fmt: skip

    # ---------------------------------------------------------------------------------------- logging
    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record one step's metrics (numbers: floats, ints, bools, 0-d arrays/tensors)."""
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {key!r}={value!r} is not a number") from None
        self.history.append((int(step), values))
        if self._jsonl is not None:
            row = {"step": int(step), "time": round(time.time(), 3)}
            row.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})  # NaN/inf -> null
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self.logger.console and (step % self.console_every_steps == 0 or step == self.total_steps):
            self._print(self._console_line(int(step), values))
        if self._wandb is not None:
            self._wandb_call(lambda: self._wandb.log(values, step=int(step)))

    def log_batch(self, step: int, record: Mapping[str, Any]) -> None:
        """Record what step `step` trained on (JSON-serialisable) in ``batches.jsonl``: resume audits read it."""
        if self._batches is not None:
            self._batches.write(json.dumps({"step": int(step), **record}) + "\n")
            self._batches.flush()

    def _console_line(self, step: int, values: dict[str, float]) -> str:
        head = f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}"
        parts = [head] + [f"{k} {_fmt(values[k])}" for k in self.logger.console_keys if k in values]
        step_times = [m[STEP_TIME_KEY] for _, m in self.history if STEP_TIME_KEY in m]
        if self.total_steps and step_times and step < self.total_steps:
            parts.append(
                f"eta {_fmt_duration((self.total_steps - step) * sum(step_times) / len(step_times))}"
            )
        return " | ".join(parts)

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    # ---------------------------------------------------------------------------------------- finish
    def finish(self) -> dict[str, Any]:
        """Close the sinks, write ``summary.json`` and ``reward_curve.png``, print the summary; idempotent."""
        if self._summary is not None:
            return self._summary
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        summary = summarize(self.history, wall_time_s=time.time() - self._start_time)
        self._summary = summary
        atomic_write_json(self.run_dir / SUMMARY_FILE, _finite(summary))
        if self.logger.plot and any(REWARD_KEY in m for _, m in self.history):
            write_reward_plot(self.history, self.run_dir / PLOT_FILE, title=self.run_name)
        if self.logger.console:
            self._print(format_summary(summary, self.run_name))
        if self._wandb is not None:
            flat = {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
            self._wandb_call(lambda: self._wandb.run.summary.update(flat))
            self._wandb_call(lambda: self._wandb.finish())
            self._wandb = None
        return summary

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    # ---------------------------------------------------------------------------------------- internals
    def _reload_history(self, start_step: int) -> None:
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        kept: list[str] = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
                step = int(row.pop("step"))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                warnings.warn(
                    f"{path}:{lineno}: unreadable metrics line dropped (interrupted write?)", stacklevel=3
                )
                continue
            if 0 < start_step and step <= start_step:  # start_step 0: a fresh run keeps nothing
                row.pop("time", None)
                self.history.append(
                    (step, {k: (math.nan if v is None else float(v)) for k, v in row.items()})
                )
                kept.append(line)
        atomic_write_text(path, "".join(f"{ln}\n" for ln in kept))

    def _init_wandb(self, cfg_dict: dict[str, Any] | None) -> None:
        w = self.logger.wandb

        def init() -> Any:
            import wandb

            id_file = self.run_dir / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            atomic_write_text(id_file, run_id + "\n")
            wandb.init(
                project=w.project,
                entity=w.entity,
                name=self.run_name,
                group=w.group,
                tags=list(w.tags),
                dir=str(self.run_dir),
                mode=w.mode,
                config=cfg_dict,
                id=run_id,
                resume="allow",
            )
            return wandb

        self._wandb = self._wandb_call(init)

    def _wandb_call(self, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # wandb must never stop training: warn once, then run without it
            if not self._wandb_warned:
                self._wandb_warned = True
                msg = f"wandb failed ({type(exc).__name__}: {exc}); continuing without wandb (console+jsonl go on)"
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                print(f"WARNING: {msg}", file=sys.stderr, flush=True)
            self._wandb = None
            return None


# --------------------------------------------------------------------------------------- summaries
def _keep_steps(path: Path, start_step: int) -> None:
    """Drop the lines of a per-step JSONL file after `start_step` (all of them when 0: a fresh run)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if 0 < start_step and int(json.loads(line)["step"]) <= start_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # an interrupted write
    atomic_write_text(path, "".join(f"{ln}\n" for ln in kept))


def summarize(
    history: Sequence[tuple[int, Mapping[str, float]]], wall_time_s: float | None = None
) -> dict[str, Any]:
    """First/last/best ``reward/mean``, total and mean step time, and each ``time/<phase>_s`` share."""
    out: dict[str, Any] = {"steps_logged": len(history)}
    if history:
        out["first_step"], out["last_step"] = history[0][0], history[-1][0]
    rewards = [(s, m[REWARD_KEY]) for s, m in history if REWARD_KEY in m and math.isfinite(m[REWARD_KEY])]
    if rewards:
        best = max(rewards, key=lambda sr: sr[1])
        out.update(
            reward_first=rewards[0][1],
            reward_last=rewards[-1][1],
            reward_best=best[1],
            reward_best_step=best[0],
        )
    step_times = [m[STEP_TIME_KEY] for _, m in history if STEP_TIME_KEY in m]
    if step_times:
        total = sum(step_times)
        out.update(time_total_s=total, time_step_mean_s=total / len(step_times))
        phases: dict[str, float] = {}
        for _, m in history:
            if STEP_TIME_KEY not in m:
                continue
            for key, value in m.items():
                if (key.startswith("time/") and key.endswith("_s") and key != STEP_TIME_KEY
                        and key not in NOT_DRIVER_PHASES):  # fmt: skip
                    name = key[len("time/") : -len("_s")]
                    phases[name] = phases.get(name, 0.0) + value
        if phases:
            # what no phase timer covered (added to a logged time/other_s, if any)
            phases["other"] = phases.get("other", 0.0) + max(total - sum(phases.values()), 0.0)
            out["time_breakdown_s"] = phases
    if wall_time_s is not None:
        out["wall_time_s"] = wall_time_s
    return out


def format_summary(summary: Mapping[str, Any], run_name: str = "") -> str:
    lines = [f"== run summary {run_name} ==".replace("  ", " ")]
    lines.append(f"steps logged {summary.get('steps_logged', 0)}")
    if "reward_first" in summary:
        lines.append(
            f"reward/mean first {_fmt(summary['reward_first'])} | last {_fmt(summary['reward_last'])} | "
            f"best {_fmt(summary['reward_best'])} (step {summary['reward_best_step']})"
        )
    if "time_total_s" in summary:
        lines.append(
            f"time total {_fmt_duration(summary['time_total_s'])} | "
            f"per step {summary['time_step_mean_s']:.1f}s"
        )
    breakdown = summary.get("time_breakdown_s") or {}
    total = summary.get("time_total_s") or 0.0
    if breakdown and total > 0:
        shares = sorted(breakdown.items(), key=lambda kv: -kv[1])
        lines.append(
            "time by phase: " + " | ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in shares)
        )
    return "\n".join(lines)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def write_reward_plot(
    history: Sequence[tuple[int, Mapping[str, float]]], path: str | Path, title: str = ""
) -> Path:
    """PNG of ``reward/mean`` per step with a trailing moving average (matplotlib Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [(s, m[REWARD_KEY]) for s, m in history if REWARD_KEY in m and math.isfinite(m[REWARD_KEY])]
    steps, rewards = [s for s, _ in points], [r for _, r in points]
    window = max(1, min(20, len(rewards) // 10 or 1))
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, rewards, marker="o", markersize=3, linewidth=1, alpha=0.45, label="reward/mean")
    if window > 1:
        ax.plot(steps, moving_average(rewards, window), linewidth=2, label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_title(title or "reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------- helpers
def _to_dict(cfg: Any) -> dict[str, Any] | None:
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    raise TypeError(f"cfg must be a Config dataclass, a dict or a DictConfig, got {type(cfg).__name__}")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.3e}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
