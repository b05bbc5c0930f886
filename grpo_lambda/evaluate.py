"""Hydra entry point: ``python -m grpo_lambda.evaluate [overrides]`` (conf/evaluate.yaml; docs/evaluation.md).

python -m grpo_lambda.evaluate model.path=runs/cpu_demo_grpo_lambda eval.datasets=[gsm8k_test,math500] \\
    eval.max_prompts_per_dataset=100 eval.samples_per_prompt=4 eval.output_dir=runs/eval/demo

Samples `eval.samples_per_prompt` responses per prompt on the rollout engines (vLLM, `rollout.num_workers` in
parallel), grades them in the verifier pool, and writes into `eval.output_dir`: samples.jsonl (one line per
response, appended as chunks finish: a killed evaluation resumes from it), summary.json (avg@k, pass@j, maj@k per
dataset and the paper's five-benchmark average), table.md (printed at the end) and summary.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from grpo_lambda.config import CONF_DIR, check_overrides_or_exit, to_config
from grpo_lambda.config.schema import Config
from grpo_lambda.data.templates import answer_format

SAMPLES, SETTINGS = "samples.jsonl", "settings.json"  # summary.json, table.md, summary.png: eval.report
SAMPLES_PER_ENGINE_CALL = 128  # responses per engine per generate call: one chunk, the unit of resumption


class EvalError(RuntimeError):
    """An evaluation that cannot start as configured; the message says what to change."""


def output_dir(cfg: Config) -> Path:
    """`eval.output_dir`, else <trainer.output_dir>/eval/<name of model.path>."""
    if cfg.eval.output_dir:
        return Path(cfg.eval.output_dir).expanduser()
    return Path(cfg.trainer.output_dir) / "eval" / Path(cfg.model.path.rstrip("/")).name


def is_run_or_checkpoint(path: Path) -> bool:
    return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "driver.json").is_file())


def resolve_eval_model(path: str, out: Path) -> Path:
    """An HF folder to evaluate: `path` itself, a built-in model, or for a run / checkpoint folder its export
    (a run's `final/` when it is the export of its latest checkpoint, else exported into out/model)."""
    from grpo_lambda.models import resolve_model

    p = Path(path).expanduser()
    if not is_run_or_checkpoint(p):
        return resolve_model(path)
    from grpo_lambda.export import export_policy, find_checkpoint

    ckpt = find_checkpoint(p).resolve()
    for candidate in (p / "final", out / "model"):
        record = candidate / "grpo_lambda_export.json"
        if record.is_file() and _exported_from(record) == ckpt:
            return candidate
    return export_policy(ckpt, out / "model", force=True)  # replaces an export of another checkpoint


def _exported_from(record: Path) -> Path | None:
    try:
        return Path(json.loads(record.read_text())["source_checkpoint"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_positions(model_path: Path) -> int | None:
    """The model's context length (config.json `max_position_embeddings`), if it states one."""
    try:
        value = json.loads((Path(model_path) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def settings(cfg: Config, model_path: Path) -> dict[str, Any]:
    """What decides the samples: a resumed evaluation must match these."""
    e = cfg.eval
    out = {
        "model_path": str(model_path.resolve()),
        "samples_per_prompt": e.samples_per_prompt,
        "temperature": e.temperature,
        "top_p": e.top_p,
        "max_response_tokens": e.max_response_tokens or cfg.model.max_response_tokens,
        "prompt_template": cfg.data.prompt_template,
        "use_chat_template": cfg.model.use_chat_template,
        "seed": cfg.trainer.seed,
        "num_workers": cfg.rollout.num_workers,
        "samples_per_engine_call": SAMPLES_PER_ENGINE_CALL,
        "math_fallback": cfg.reward.math_fallback,
    }
    strict = answer_format(cfg.data.prompt_template, cfg.reward.strict_format)
    # strict grading changes the recorded outcomes; named only when on, so earlier evaluations resume
    if strict:
        out["answer_format"] = strict
    return out


def check_settings(out: Path, wanted: dict[str, Any]) -> None:
    """Record `wanted` in out/settings.json, or require it to equal what a previous (killed) evaluation used."""
    from grpo_lambda.utils import atomic_write_json

    path = out / SETTINGS
    if path.is_file() and (out / SAMPLES).is_file():
        had = json.loads(path.read_text())
        diff = {k: (had.get(k), v) for k, v in wanted.items() if had.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise EvalError(
                f"{out} holds an evaluation made with other settings ({changes}); its samples would mix with "
                "these: set eval.output_dir to another folder, or delete this one"
            )
    atomic_write_json(path, wanted)


def load_samples(path: Path, k: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The complete prompts (k records each) of a previous evaluation's samples.jsonl. A torn last line (the run
    was killed mid-write) or incomplete prompts are dropped and the file rewritten without them."""
    from grpo_lambda.eval.report import problem_key
    from grpo_lambda.utils import atomic_write_text

    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    by_prompt: dict[tuple[str, str], list[dict[str, Any]]] = {}
    rewrite = False
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                rewrite = True  # torn last line
                continue
            raise EvalError(
                f"{path}:{i}: not JSON; move the file away to start this evaluation afresh"
            ) from None
        by_prompt.setdefault(problem_key(rec), []).append(rec)
    done = {key: recs for key, recs in by_prompt.items() if len(recs) == k}
    if rewrite or len(done) != len(by_prompt):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for recs in done.values() for r in recs))
    return done


def prepare(cfg: Config, model_path: Path) -> tuple[Config, dict[str, list], int]:
    """The run's config for evaluation (responses of eval.max_response_tokens, engines alone), the formatted
    prompt sets, and the engine context: prompt + response, at most the model's positions (a long prompt then
    leaves its response fewer tokens: such responses end as truncated)."""
    from transformers import AutoTokenizer

    from grpo_lambda.data.datasets import build_eval_rows
    from grpo_lambda.data.templates import PromptFormatter

    max_tokens = cfg.eval.max_response_tokens or cfg.model.max_response_tokens
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, max_response_tokens=max_tokens),
        cluster=dataclasses.replace(cfg.cluster, placement="split"),  # nothing to colocate with
        rollout=dataclasses.replace(cfg.rollout, max_staleness=0),  # a CPU engine uses every core
    )
    max_model_len = cfg.model.max_prompt_tokens + max_tokens
    max_positions = model_positions(model_path)
    if max_positions is not None and max_positions < max_model_len:
        max_model_len = max_positions
    prompt_limit = min(cfg.model.max_prompt_tokens, max_model_len - 1)
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.model.tokenizer_path or model_path))
    formatter = PromptFormatter(tokenizer, cfg.data.prompt_template, cfg.model.use_chat_template,
                                prompt_limit)  # fmt: skip
    sets = {}
    for name, rows in build_eval_rows(cfg).items():
        sets[name], dropped = formatter.format_rows(rows)
        if dropped:
            raise EvalError(
                f"{len(dropped)} prompts of {name} are longer than {prompt_limit} tokens (model.max_prompt_tokens="
                f"{cfg.model.max_prompt_tokens}, the model's context {max_model_len}; e.g. {dropped[0]!r}): raise "
                "model.max_prompt_tokens so every prompt is scored"
            )
    return cfg, sets, max_model_len


def sample_pending(evaluator, cfg: Config, sets: dict[str, list], done: dict, samples_file, bar) -> None:
    """Generate and grade every chunk that holds an unfinished prompt, appending its new records to
    `samples_file` (flushed and fsynced per chunk) and to `done`. Chunk c of a dataset always holds the same
    prompts and samples with the same seed, so a resumed evaluation regenerates exactly what was lost."""
    from grpo_lambda.eval.report import problem_key
    from grpo_lambda.eval.runner import eval_spec
    from grpo_lambda.utils import step_seed

    chunk = max(1, SAMPLES_PER_ENGINE_CALL // cfg.eval.samples_per_prompt) * cfg.rollout.num_workers
    for name, prompts in sets.items():
        for c in range(0, len(prompts), chunk):
            part = prompts[c : c + chunk]
            if all((name, p.id) in done for p in part):
                continue
            spec = eval_spec(cfg, step_seed(cfg.trainer.seed, c // chunk, f"eval/{name}"))
            new = [r for r in evaluator.sample(part, spec) if problem_key(r) not in done]
            samples_file.write("".join(json.dumps(r) + "\n" for r in new))
            samples_file.flush()
            os.fsync(samples_file.fileno())
            for r in new:
                done.setdefault(problem_key(r), []).append(r)
            bar.update(len(new))


def evaluate(cfg: Config) -> dict[str, Any]:
    """Run the evaluation `cfg` describes (see the module docstring); returns the summary written to summary.json."""
    from tqdm import tqdm

    from grpo_lambda.eval import report
    from grpo_lambda.eval.runner import Evaluator
    from grpo_lambda.launch import init_ray, place, release, start_verifier
    from grpo_lambda.rollout.group import RolloutGroup

    t0, k = time.perf_counter(), cfg.eval.samples_per_prompt
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_eval_model(cfg.model.path, out)
    cfg, sets, max_model_len = prepare(cfg, model_path)
    check_settings(out, settings(cfg, model_path))
    done = load_samples(out / SAMPLES, k)
    wanted = [(name, p.id) for name, prompts in sets.items() for p in prompts]
    print(f"[grpo-lambda] evaluating {model_path} on {', '.join(f'{n} ({len(p)})' for n, p in sets.items())}, "
          f"k={k}, T={cfg.eval.temperature}, -> {out}" + (f" (resuming: {len(done)} prompts done)" if done else ""))  # fmt: skip

    gpus = init_ray(cfg)
    verifier = start_verifier(cfg)
    placement = place(cfg, gpus, roles=("rollout",))
    rollout = None
    try:
        rollout = RolloutGroup(cfg, str(model_path), placement["rollout"], gpus, max_model_len=max_model_len)
        evaluator = Evaluator(
            rollout, verifier, cfg.reward, answer_format(cfg.data.prompt_template, cfg.reward.strict_format)
        )
        bar = tqdm(total=len(wanted) * k, initial=sum(len(done.get(key, [])) for key in wanted), unit="sample",
                   desc="eval", dynamic_ncols=True)  # fmt: skip
        with open(out / SAMPLES, "a", encoding="utf-8") as f:
            sample_pending(evaluator, cfg, sets, done, f, bar)
        bar.close()
        records = [r for key in wanted for r in done[key]]
        maj = evaluator.majority(records)
    finally:
        if rollout is not None:
            rollout.shutdown()
        verifier.shutdown()
        release(placement)

    summary = report.summarize(records, maj, k)
    summary["meta"] = {**settings(cfg, model_path), "model": cfg.model.path, "datasets": list(sets),
                       "max_prompts_per_dataset": cfg.eval.max_prompts_per_dataset,
                       "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    paths = report.write_report(summary, out)
    print(paths["table"].read_text(encoding="utf-8"), end="")
    print(f"[grpo-lambda] wrote {', '.join(map(str, paths.values()))} in {summary['meta']['wall_s']} s")
    return summary


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def _main(dcfg: DictConfig) -> None:
    from grpo_lambda.data.jsonl import DataError
    from grpo_lambda.export import ExportError

    cfg = to_config(dcfg)
    try:
        evaluate(cfg)
    except (EvalError, ExportError) as exc:  # what to change, in one line
        raise SystemExit(f"Evaluation error: {exc}") from None
    except DataError as exc:  # a malformed eval file: file:line, before Ray starts
        raise SystemExit(f"Data error: {exc}") from None


def main() -> None:
    check_overrides_or_exit(config_name="evaluate")  # bad keys/values fail here, before Ray or a model starts
    _main()


if __name__ == "__main__":
    main()
