"""The policy as a Hugging Face causal LM: loading from a local folder, optional LoRA, response log-probabilities.

`response_logp` computes log π(o_t | q, o_<t) for the response tokens of a `LearnerBatch` only: the model's
lm_head runs on the last T+1 positions (`logits_to_keep`), never on the prompt, and the log-softmax is taken in fp32
one row at a time (`token_logp_from_logits`), so no fp32 [B, P+T, V] tensor is built.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from grpo_lambda.algorithms import entropy_from_logits, token_logp_from_logits

from .batch import LearnerBatch

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {sorted(TORCH_DTYPES)}") from None


def check_model_dir(model_path: str | os.PathLike) -> Path:
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face model folder (no config.json); point model.path at a local folder "
            "(nothing is downloaded at run time)"
        )
    return path


def load_causal_lm(
    model_path: str | os.PathLike,
    *,
    dtype: str = "bf16",
    gradient_checkpointing: bool = False,
    trainable: bool = True,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target_modules: tuple[str, ...] = (),
):
    """An `AutoModelForCausalLM` from a local folder, in `dtype` ("bf16" | "fp32"), KV cache off.

    trainable=False freezes it (reference model). lora_rank > 0 wraps it with peft LoRA adapters (only they train).
    """
    from transformers import AutoModelForCausalLM

    path = check_model_dir(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype), local_files_only=True)
    model.config.use_cache = False
    if not trainable:
        model.requires_grad_(False)
        return model.eval()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank > 0:
        model = apply_lora(model, lora_rank, lora_alpha, lora_dropout, lora_target_modules)
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules: tuple[str, ...]):
    """Wrap `model` with peft LoRA adapters on `target_modules`; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError(
            f"learner.lora_rank={rank} needs the `peft` package, which is not installed: `pip install peft`, "
            "or set learner.lora_rank=0 to train all weights"
        ) from err
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def response_logits(model, batch: LearnerBatch) -> Tensor:
    """Logits [B, T, V] (model dtype) at the positions that predict the response tokens."""
    T = batch.response_len
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=T + 1,
    )
    logits = out.logits
    if logits.shape[1] != T + 1:
        raise RuntimeError(
            f"{type(model).__name__} returned logits for {logits.shape[1]} positions, expected {T + 1}: "
            "the model does not honour `logits_to_keep`"
        )
    return logits[:, :-1]


def response_logp(
    model, batch: LearnerBatch, *, temperature: float = 1.0, entropy: str = "none"
) -> tuple[Tensor, Tensor | None]:
    """log π(o_t | q, o_<t) [B, T] in fp32 (0 where response_mask is False), and optionally the entropy [B, T].

    `temperature` must match the rollout's sampling temperature (logits / τ, as the engine samples).
    entropy: "none"; "metric" (no gradient, one row at a time, so no fp32 [B, T, V] copy); "grad" (differentiable,
    for an entropy bonus).
    """
    if entropy not in ("none", "metric", "grad"):
        raise ValueError(f"entropy={entropy!r} must be 'none', 'metric' or 'grad'")
    logits = response_logits(model, batch)
    logp = token_logp_from_logits(logits, batch.response_ids, temperature=temperature)
    ent = None
    if entropy == "grad":
        ent = entropy_from_logits(logits / temperature if temperature != 1.0 else logits)
    elif entropy == "metric":
        with torch.no_grad():
            ent = torch.cat(
                [entropy_from_logits(row.detach() / temperature) for row in logits.split(1, dim=0)]
            )
    if ent is not None:
        ent = ent.masked_fill(~batch.response_mask, 0.0)
    return logp.masked_fill(~batch.response_mask, 0.0), ent


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
