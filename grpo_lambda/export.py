"""Export a trained policy as a Hugging Face folder that transformers, vLLM and PEFT load directly.

    python -m grpo_lambda.export runs/cpu_demo_grpo_lambda exported/         # the run's latest checkpoint
    python -m grpo_lambda.export runs/x/checkpoints/step_000050 out/ --dtype bfloat16
    python -m grpo_lambda.export runs/x out-adapter/ --adapter-only          # LoRA runs: the adapter alone

    from grpo_lambda.export import export_policy, find_checkpoint
    export_policy("runs/x", "out")                                          # -> Path("out")

What it does (docs/export.md):
1. `find_checkpoint`: a run folder (`<output_dir>/<run_name>`, holding config.yaml and checkpoints/) means its
   `checkpoints/latest`; a `step_*` folder is taken as it is (it must be complete: driver.json).
2. The run's config.yaml (written by tracking.py) is read back into the `Config` schema: `model.path`,
   `model.tokenizer_path`, `model.dtype` and `model.lora` say how the learner built the policy.
3. The learner's DeepSpeed checkpoint (`step_*/learner/model/`) is gathered offline into one fp32 state dict:
   ZeRO 1/2/3 through DeepSpeed's own `zero_to_fp32` (the optimiser's fp32 master weights, from all ranks'
   partitions); parameters the optimiser does not own (LoRA's frozen base weights under ZeRO-1) and ZeRO-0
   checkpoints come from the saved module state dict.
4. The policy is rebuilt as the learner builds it (`learner.model.load_causal_lm`, LoRA adapters when
   `model.lora.rank > 0`) and the state dict is loaded strictly: a missing or unexpected name is an error.
5. LoRA is merged (`merge_and_unload`) unless `adapter_only`; the weights are cast to `dtype` (default: the run's
   `model.dtype`) and saved as safetensors, with config.json, generation_config.json, the tokenizer (with its chat
   template) and `grpo_lambda_export.json` (what was exported, from where).
The folder is written into a temporary sibling and renamed into place, so an interrupted export leaves nothing
half-written; an existing non-empty output folder is replaced only with `force` (atomically: swapped in).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from grpo_lambda import checkpoint
from grpo_lambda.export_weights import (  # noqa: F401  (re-exported: the export's public API)
    ExportError,
    gather_fp32_state_dict,
    load_checkpoint_file,
    load_policy_weights,
)
from grpo_lambda.tracking import CONFIG_FILE as RUN_CONFIG_FILE  # <run>/config.yaml, written at the start

EXPORT_INFO_FILE = "grpo_lambda_export.json"
LEARNER_DIR = "learner"  # step_*/learner: the DeepSpeed checkpoint root (Trainer.save)
LEARNER_TAG = "model"  # its tag
EXPORT_DTYPES = ("float32", "bfloat16")


# ------------------------------------------------------------------------------------------- where from
def find_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint folder (`<run>/checkpoints/step_NNNNNN`) that `source` names.

    `source` may be a run folder (its `checkpoints/latest`), its `checkpoints/` folder (the same), or a `step_*`
    folder. A checkpoint counts only once complete (driver.json written, see checkpoint.py)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ExportError(f"{path} does not exist: pass a run folder (<output_dir>/<run_name>) or a checkpoint "
                          "folder (<run>/checkpoints/step_NNNNNN)")  # fmt: skip
    if not path.is_dir():
        raise ExportError(f"{path} is a file: pass a run folder or a checkpoint folder (step_NNNNNN)")
    if (path / checkpoint.DRIVER_STATE).is_file():
        return _check_learner_state(path)
    if path.name.startswith("step_") and (path / LEARNER_DIR).exists():
        raise ExportError(
            f"{path} is an incomplete checkpoint (no {checkpoint.DRIVER_STATE}: the save was interrupted); "
            f"pass the run folder {path.parent.parent} to export its latest complete checkpoint"
        )
    root = path if path.name == "checkpoints" else checkpoint.checkpoint_root(path)
    run_dir = root.parent
    if not root.is_dir():
        if (run_dir / RUN_CONFIG_FILE).is_file():
            raise ExportError(
                f"run folder {run_dir} has no checkpoints yet ({root} does not exist): train until a save "
                "(trainer.save_every_steps, or the end of the run), then export"
            )
        raise ExportError(
            f"{path} is neither a run folder (config.yaml and checkpoints/) nor a checkpoint folder "
            f"(step_NNNNNN holding {checkpoint.DRIVER_STATE}); pass <output_dir>/<run_name> or one of its "
            "checkpoints/step_* folders"
        )
    latest = root / checkpoint.LATEST
    if not latest.is_file():
        raise ExportError(
            f"run folder {run_dir} has no complete checkpoint yet ({latest} is missing): train until a save "
            "(trainer.save_every_steps, or the end of the run), then export"
        )
    folder = root / latest.read_text().strip()
    if not (folder / checkpoint.DRIVER_STATE).is_file():
        raise ExportError(f"{latest} names {folder.name}, which is not a complete checkpoint (no "
                          f"{checkpoint.DRIVER_STATE}); pass an older step_* folder of {root}")  # fmt: skip
    return _check_learner_state(folder)


def _check_learner_state(folder: Path) -> Path:
    ds_dir = folder / LEARNER_DIR / LEARNER_TAG
    if not ds_dir.is_dir() or not any(ds_dir.glob("*_model_states.pt")):
        raise ExportError(
            f"checkpoint {folder} has no learner weights ({ds_dir}/*_model_states.pt missing): it was not "
            "written by grpo_lambda's trainer, or its files were removed"
        )
    return folder


def run_dir_of(ckpt: Path) -> Path:
    """The run folder of a checkpoint folder: `<run>/checkpoints/step_NNNNNN` -> `<run>`."""
    return ckpt.parent.parent


def load_run_config(run_dir: str | os.PathLike):
    """The run's `Config`, read back from the config.yaml that the trainer wrote into its run folder (merged onto
    the structured schema, so types are checked and keys the file lacks get their defaults).

    Not re-validated (`config.validate`): the run was validated when it started, and a rule added since must not
    make its checkpoints unexportable. If the whole file no longer fits the schema (a key renamed since), only the
    sections export reads, `model` and `learner`, are merged."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from grpo_lambda.config import Config

    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise ExportError(
            f"{path} is missing: the run folder's config.yaml (written by the trainer at start) says how the "
            "policy was built; restore it, or export from a run folder that has one"
        )
    try:
        saved = OmegaConf.load(path)
    except Exception as exc:  # a YAML error
        raise ExportError(f"cannot read {path}: {exc}") from None
    schema = OmegaConf.structured(Config)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, saved))
    except OmegaConfBaseException:
        pass
    try:
        part = {k: saved[k] for k in ("model", "learner") if k in saved}
        return OmegaConf.to_object(OmegaConf.merge(schema, part))
    except OmegaConfBaseException as exc:
        raise ExportError(f"{path} does not fit this version's config schema: {exc}") from None


def _tokenizer_source(tokenizer_path: str | None, base: Path) -> Path:
    from grpo_lambda.models import resolve_model

    if not tokenizer_path:
        return base
    path = Path(tokenizer_path).expanduser()
    return path if path.is_dir() else resolve_model(tokenizer_path)


def _write_tokenizer(source: Path, out: Path) -> bool:
    """Save the tokenizer (and its chat template) into `out`; returns whether it has a chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    tokenizer.save_pretrained(str(out))
    # Keep the source's tokenizer class name: a folder built for transformers 4.x says PreTrainedTokenizerFast,
    # which transformers 5 would rewrite to its own TokenizersBackend (unknown to 4.x).
    src_config, out_config = source / "tokenizer_config.json", out / "tokenizer_config.json"
    if src_config.is_file() and out_config.is_file():
        wanted = json.loads(src_config.read_text()).get("tokenizer_class")
        written = json.loads(out_config.read_text())
        if wanted and written.get("tokenizer_class") != wanted:
            written["tokenizer_class"] = wanted
            out_config.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    return bool(getattr(tokenizer, "chat_template", None))


# ------------------------------------------------------------------------------------------- the export
def export_policy(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    adapter_only: bool = False,
    force: bool = False,
    base_model: str | os.PathLike | None = None,
    quiet: bool = False,
) -> Path:
    """Write the policy of `source` (a run folder: its latest checkpoint; or a `step_*` checkpoint folder) to
    `out_dir` as a Hugging Face folder; returns `out_dir`.

    dtype: "float32" | "bfloat16" (None: the run's `model.dtype`). adapter_only: LoRA runs only, the PEFT adapter
    alone (adapter_config.json + adapter_model.safetensors) instead of merged weights. force: replace a non-empty
    `out_dir` (atomically). base_model: the base model folder, when the run's `model.path` no longer resolves
    here. Prints one summary line unless `quiet`."""
    import torch

    from grpo_lambda.learner.model import load_causal_lm, torch_dtype
    from grpo_lambda.models import resolve_model

    t0 = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(out_dir, force)
    ckpt = find_checkpoint(source)
    run_dir = run_dir_of(ckpt)
    cfg = load_run_config(run_dir)
    dtype = dtype or cfg.model.dtype
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    lora = cfg.model.lora
    if adapter_only and lora.rank <= 0:
        raise ExportError(
            f"--adapter-only: the run {run_dir} trained all weights (model.lora.rank=0 in its config.yaml), so "
            "there is no adapter; export the full model (drop --adapter-only)"
        )
    try:
        base = resolve_model(base_model or cfg.model.path)
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(
            f"the base model of {run_dir} (model.path={cfg.model.path!r} in its config.yaml) is not found here: "
            f"{exc}; pass --base-model <HF folder> (export_policy(base_model=...))"
        ) from None
    step = int(checkpoint.load_driver_state(ckpt).get("step", -1))
    ds_dir = ckpt / LEARNER_DIR / LEARNER_TAG

    with _quiet_transformers(), torch.no_grad():
        # as the learner builds it, in fp32 (the master weights' dtype); cast once at the end
        model = load_causal_lm(base, dtype="float32", lora=lora if lora.rank > 0 else None)
        model.config.use_cache = json.loads((base / "config.json").read_text()).get("use_cache", True)
        state = gather_fp32_state_dict(ds_dir, wanted=set(model.state_dict()))
        load_policy_weights(model, state, ds_dir)
        del state
        model.requires_grad_(False)
        merged = lora.rank > 0 and not adapter_only
        if merged:
            model = model.merge_and_unload()  # W + (alpha / r) B A in fp32; cast once below
        model = model.to(torch_dtype(dtype)).eval()
        params = sum(p.numel() for n, p in model.named_parameters() if not adapter_only or "lora_" in n)

        def write(tmp: Path) -> None:
            if adapter_only:
                model.save_pretrained(str(tmp), safe_serialization=True)  # PEFT: the adapter alone
            else:
                model.save_pretrained(str(tmp))  # safetensors (the only format transformers 5 writes)
                if not list(tmp.glob("*.safetensors")):
                    raise ExportError(f"transformers wrote no safetensors into {tmp}; upgrade transformers")
                if (base / "generation_config.json").is_file():  # the base's sampling defaults, as shipped
                    shutil.copyfile(base / "generation_config.json", tmp / "generation_config.json")
            chat = _write_tokenizer(_tokenizer_source(cfg.model.tokenizer_path, base), tmp)
            info = {
                "source_checkpoint": str(ckpt.resolve()),
                "run_dir": str(run_dir.resolve()),
                "step": step,
                "dtype": dtype,
                "zero_stage": cfg.learner.zero_stage,
                "base_model": str(base.resolve()),
                "lora_rank": lora.rank,
                "lora_merged": merged,
                "adapter_only": adapter_only,
                "parameters": params,  # adapter_only: the adapter's
                "chat_template": chat,
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            # transformers writes some files 0600; the folder is meant to be shared
            for file in tmp.rglob("*"):
                if file.is_file():
                    os.chmod(file, 0o644)

        _write_atomically(out_dir, write, replace=force)
    seconds = time.perf_counter() - t0
    if not quiet:
        what = "LoRA adapter" if adapter_only else ("LoRA merged" if merged else "full weights")
        print(f"[grpo-lambda] exported {ckpt.name} of {run_dir} -> {out_dir} ({dtype}, {what}, "
              f"{params / 1e6:.2f}M params, {seconds:.1f} s)", flush=True)  # fmt: skip
    return out_dir


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' per-call progress bars ("Loading weights", "Writing model shards") off, then as they were:
    an export prints its one summary line."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {out_dir} is a file: choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"output folder {out_dir} is not empty: choose another one, or pass --force to "
                          "replace it")  # fmt: skip


def _write_atomically(out_dir: Path, write: Callable[[Path], None], replace: bool) -> None:
    """`write(tmp)` into a temporary sibling of `out_dir`, then rename it into place. An existing folder (empty, or
    any with `replace`) is swapped out only once the new one is complete, and then removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    old = None
    try:
        write(tmp)
        if out_dir.exists():
            _check_out_dir(out_dir, replace)  # again: something may have appeared meanwhile
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / out_dir.name)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not out_dir.exists() and (old / out_dir.name).exists():  # the swap failed: restore
                os.rename(old / out_dir.name, out_dir)
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lambda.export",
        description="Write a trained policy as a Hugging Face folder (safetensors, config.json, "
        "generation_config.json, tokenizer with its chat template) that transformers and vLLM load. "
        "Weights are gathered offline from the learner's DeepSpeed checkpoint (any ZeRO stage); LoRA "
        "adapters are merged into the base weights unless --adapter-only.",
        epilog="examples:\n"
        "  python -m grpo_lambda.export runs/cpu_demo_grpo_lambda exported/demo\n"
        "  python -m grpo_lambda.export runs/x/checkpoints/step_000050 out --dtype bfloat16\n"
        "  python -m grpo_lambda.export runs/x out-adapter --adapter-only   # LoRA runs\n"
        "see docs/export.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="a run folder (<output_dir>/<run_name>: its latest checkpoint) or a "
                        "checkpoint folder (<run>/checkpoints/step_NNNNNN)")  # fmt: skip
    parser.add_argument("out", help="the folder to write (must not exist, or be empty; see --force)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default=None,
                        help="weight dtype of the export (default: the run's model.dtype)")  # fmt: skip
    parser.add_argument("--adapter-only", action="store_true",
                        help="LoRA runs: write the PEFT adapter alone (adapter_config.json + adapter_model"
                        ".safetensors; load with peft.PeftModel.from_pretrained(base, out))")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder (atomically)")
    parser.add_argument("--base-model", default=None,
                        help="the base model folder, when the run's model.path does not resolve on this "
                        "machine")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export_policy(args.source, args.out, dtype=args.dtype, adapter_only=args.adapter_only, force=args.force,
                      base_model=args.base_model)  # fmt: skip
    except ExportError as exc:
        print(f"export error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
