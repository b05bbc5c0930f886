"""The policy's full weights out of a DeepSpeed engine, one tensor at a time, under Hugging Face names.

What weight sync sends, the read-back check compares and `param_checksum` hashes: every parameter and persistent
buffer of the HF model, LoRA adapters merged into their base weights (W + ΔW), tied parameters once or under each
name. Under ZeRO-3 each parameter is gathered from its partitions (a collective: every rank iterates).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from grpo_lambda.compat import is_zero3_partitioned


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def full_named_tensors(
    module: torch.nn.Module, on_this_rank: bool, *, unique: bool = False, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, Tensor | None]]:
    """(HF name, full tensor copied to `device`) for every parameter and persistent buffer, one at a time.

    Tied parameters come under each of their names, or only the first with `unique` (nothing is kept between items
    then: a streaming sender holds one tensor at a time). Under ZeRO-3 every rank must iterate (the gathers are
    collective); ranks with on_this_rank=False get None instead of a copy."""
    if is_peft_model(module):
        merged = merged_lora_weights(module) if on_this_rank else {}
        yield from ((name, t.to(device)) for name, t in merged.items())
        return
    keys = set(module.state_dict().keys())
    copies: dict[int, Tensor | None] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in copies:
            if not unique:
                yield name, copies[id(param)]
            continue
        if is_zero3_partitioned(param):  # gather the full tensor on every rank
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                value = param.detach().to(device, copy=True) if on_this_rank else None
        else:  # streaming (unique) sends it before training resumes: no copy needed on the same device
            value = param.detach().to(device, copy=not unique) if on_this_rank else None
        copies[id(param)] = None if unique else value
        yield name, value
    for name, buf in module.named_buffers():
        if name in keys:
            yield name, buf.detach().to(device, copy=True) if on_this_rank else None


def tied_lm_head(module: torch.nn.Module) -> Tensor | None:
    """The input embedding, when the model ties its lm_head to it (inference engines keep their own lm_head and
    must be sent `lm_head.weight` explicitly); None otherwise."""
    model = module.get_base_model() if is_peft_model(module) else module
    if not getattr(model.config, "tie_word_embeddings", False):
        return None
    return model.get_input_embeddings().weight


def merged_lora_weights(model) -> dict[str, Tensor]:
    """HF-named full weights of a peft LoRA model, adapters merged (W + ΔW), without modifying the model.

    Used for weight sync: inference engines load plain HF weights. ZeRO-0/1/2 only (full parameters on every rank).
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out: dict[str, Tensor] = {}
    merged_modules = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            merged_modules[name] = module
    for name, param in base.named_parameters(remove_duplicate=False):
        if ".lora_" in name or "lora_embedding" in name:
            continue
        hf_name = name.replace(".base_layer.", ".")
        module_name = hf_name.rsplit(".", 1)[0]
        value = param.detach()
        if module_name in merged_modules and hf_name.endswith(".weight"):
            module = merged_modules[module_name]
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    value = value + module.get_delta_weight(adapter).to(value.dtype)
        out[hf_name] = value.clone().cpu()
    return out
