"""The weights of an export (grpo_lambda/export.py, steps 3 and 4): a learner's DeepSpeed checkpoint gathered offline
into one fp32 state dict, loaded strictly into the rebuilt policy. Every file is read with `torch.load(weights_only=
True)`, allowing only DeepSpeed's own checkpoint classes (docs/security.md).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any


class ExportError(RuntimeError):
    """What stops an export, in one readable line: which path, what is wrong, what to do."""


def gather_fp32_state_dict(ds_dir: str | os.PathLike, wanted: set[str] | None = None) -> dict[str, Any]:
    """One fp32 state dict (the engine's module names) from a DeepSpeed checkpoint folder (`.../learner/model`),
    gathered offline on the CPU from every rank's files.

    ZeRO 1/2/3: the optimiser's fp32 master weights via `deepspeed.utils.zero_to_fp32`, plus buffers and frozen
    parameters where DeepSpeed saved them. Names in `wanted` still missing afterwards are taken from the saved
    module state dict (ZeRO <= 2 keeps full tensors there: frozen parameters under ZeRO-1, everything under
    ZeRO-0, whose checkpoint has no partitioned optimiser files)."""
    ds_dir = Path(ds_dir)
    state: dict[str, Any] = {}
    optim_files = sorted(ds_dir.glob("*_optim_states.pt"), key=_rank_of)
    model_states = ds_dir / "mp_rank_00_model_states.pt"  # ZeRO <= 2 (ZeRO-3: zero_pp_rank_*_model_states.pt)
    if optim_files:
        peek = load_checkpoint_file(optim_files[0], mmap=True)
        optim = peek.get("optimizer_state_dict", {})
        if "zero_stage" in optim:  # a ZeRO optimiser (stage 1, 2 or 3)
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            del peek, optim
            quiet = io.StringIO()  # zero_to_fp32 prints a few progress lines of its own
            with (
                contextlib.redirect_stdout(quiet),
                contextlib.redirect_stderr(quiet),
                weights_only_loads(ds_dir),
            ):
                state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir.parent), tag=ds_dir.name)
        elif "param_slice_mappings" in optim and model_states.is_file():  # bf16 without ZeRO partitioning
            del peek, optim
            state = _bf16_optimizer_fp32_state_dict(optim_files, model_states)
        else:
            raise ExportError(f"{optim_files[0]} is an optimiser state this DeepSpeed version's export does not "
                              "know (neither ZeRO nor BF16_Optimizer)")  # fmt: skip
    if model_states.is_file() and (not state or (wanted is not None and set(wanted) - set(state))):
        module = load_checkpoint_file(model_states)["module"]
        for name, value in module.items():
            if name not in state and (wanted is None or name in wanted):
                state[name] = value.float() if value.is_floating_point() else value
    return state


def load_checkpoint_file(file: Path, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` of a DeepSpeed checkpoint file: tensors, plain containers and the few classes
    DeepSpeed itself pickles (`compat.deepspeed_checkpoint_globals`); anything else is an ExportError, never run."""
    import torch

    with weights_only_loads(file):
        return torch.load(file, map_location="cpu", mmap=mmap, weights_only=True)


@contextlib.contextmanager
def weights_only_loads(where: Path):
    """Every `torch.load` in the block (DeepSpeed's `zero_to_fp32` too) with `weights_only=True`, allowing DeepSpeed's
    checkpoint classes only; a file holding other Python objects is an ExportError naming `where`."""
    import pickle

    from grpo_lambda.compat import deepspeed_checkpoint_globals, weights_only_torch_load

    try:
        with weights_only_torch_load(deepspeed_checkpoint_globals()):
            yield
    except pickle.UnpicklingError as exc:
        raise ExportError(
            f"{where}: refused to load: it holds Python objects other than tensors and DeepSpeed's checkpoint "
            f"state ({_unpickling_reason(exc)}); export only checkpoints you trust, written by grpo-lambda"
        ) from None


def _unpickling_reason(exc: BaseException) -> str:
    """The line of torch's weights-only error that names the refused global (torch 2.13), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line]
    return (named or lines or [type(exc).__name__])[0][:200]


def _rank_of(path: Path) -> int:
    """The data-parallel rank in a DeepSpeed file name (`..._zero_pp_rank_<r>_mp_rank_00_...`)."""
    part = path.name.split("pp_rank_", 1)[-1].split("_", 1)[0]
    return int(part) if part.isdigit() else 0


def _bf16_optimizer_fp32_state_dict(optim_files: list[Path], model_states: Path) -> dict[str, Any]:
    """fp32 master weights of DeepSpeed's BF16_Optimizer (bf16 with ZeRO-1, which `zero_to_fp32` does not read):
    each rank holds a contiguous slice of every flattened parameter group, and `param_slice_mappings` says where
    each parameter's fragment lies in it; the fragments in rank order make the whole parameter."""
    import torch

    shapes: dict[str, Any] = {}
    for group in load_checkpoint_file(model_states)["param_shapes"]:
        shapes.update(group)
    pieces: dict[str, list] = {}
    for file in optim_files:  # rank order
        optim = load_checkpoint_file(file, mmap=True)["optimizer_state_dict"]
        for part, mapping in zip(optim["single_partition_of_fp32_groups"], optim["param_slice_mappings"]):
            for name, address in mapping.items():
                pieces.setdefault(name, []).append(part.narrow(0, address.start, address.numel))
    state = {}
    for name, parts in pieces.items():
        flat = torch.cat(parts).float()
        shape = torch.Size(shapes[name])
        if flat.numel() != shape.numel():
            raise ExportError(f"{model_states.parent}: {name} has {flat.numel()} elements over the ranks' "
                              f"optimiser files, expected {shape.numel()} (a rank's file missing?)")  # fmt: skip
        state[name] = flat.view(shape).clone()
    return state


def load_policy_weights(model, state: dict[str, Any], where: Path) -> None:
    """`model.load_state_dict(state)`, strictly: every name of the model must be loaded (a tied parameter counts as
    loaded when any of its names is) and no name may be left over. Raises ExportError naming a few."""
    own = model.state_dict(keep_vars=True)
    aliases: dict[int, set[str]] = {}
    for name, tensor in own.items():
        aliases.setdefault(id(tensor), set()).add(name)
    loadable = {k: v for k, v in state.items() if k in own}
    result = model.load_state_dict(loadable, strict=False)
    missing = [k for k in result.missing_keys if not aliases[id(own[k])] & loadable.keys()]
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ExportError(
            f"the checkpoint {where} does not fit the model rebuilt from the run's config ({len(missing)} "
            f"weights missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}): was "
            "config.yaml (model.path, model.lora) changed after training?"
        )
