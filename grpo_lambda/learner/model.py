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
from grpo_lambda.config.schema import MODEL_DTYPES, LoraConfig

from .batch import LearnerBatch
from .packing import packed_response_logits

TORCH_DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES}  # "bfloat16" -> torch.bfloat16 ...


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


# auto picks eager attention on a CPU for sequences up to this long: its [B, H, T, T] scores are small there, and
# its plain matmuls train a 135M model ~15 % faster than SDPA's CPU flash kernel (fwd+bwd, bf16, T = 170, 2 cores).
EAGER_ATTENTION_MAX_LEN = 1024


def attention_implementation(requested: str, on_cuda: bool, max_len: int) -> str:
    """`model.attn_implementation` resolved: auto = sdpa on GPUs; on CPUs eager up to EAGER_ATTENTION_MAX_LEN
    positions, else sdpa. Both are exact attention (the choice changes speed and memory, not results beyond
    rounding)."""
    if requested != "auto":
        return requested
    return "eager" if not on_cuda and max_len <= EAGER_ATTENTION_MAX_LEN else "sdpa"


def load_causal_lm(
    model_path: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    gradient_checkpointing: bool = False,
    trainable: bool = True,
    lora: LoraConfig | None = None,
    attn_implementation: str = "sdpa",
):
    """An `AutoModelForCausalLM` from a local folder, in `dtype` ("bfloat16" | "float32"), KV cache off.

    trainable=False freezes it (reference model). `lora.rank > 0` wraps it with peft LoRA adapters (only they train).
    """
    from transformers import AutoModelForCausalLM

    path = check_model_dir(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype), local_files_only=True,
                                                 attn_implementation=attn_implementation)  # fmt: skip
    model.config.use_cache = False
    if not trainable:
        model.requires_grad_(False)
        return model.eval()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None and lora.rank > 0:
        model = apply_lora(model, lora)
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def apply_lora(model, lora: LoraConfig):
    """Wrap `model` with peft LoRA adapters on `lora.target_modules`; only the adapters train."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            f"model.lora.rank={lora.rank} needs the `peft` package, which is not installed: `pip install peft` "
            "(make install does), or set model.lora.rank=0 to train all weights"
        ) from err
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


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
    model, batch: LearnerBatch, *, temperature: float = 1.0, entropy: str = "none", packed: bool = False
) -> tuple[Tensor, Tensor | None]:
    """log π(o_t | q, o_<t) [B, T] in fp32 (0 where response_mask is False), and optionally the entropy [B, T].

    `temperature` must match the rollout's sampling temperature (logits / τ, as the engine samples).
    entropy: "none"; "metric" (no gradient, one row at a time, so no fp32 [B, T, V] copy); "grad" (differentiable,
    for an entropy bonus). packed: compute on group-packed rows (packing.py; `learner.pack_groups`).
    """
    if entropy not in ("none", "metric", "grad"):
        raise ValueError(f"entropy={entropy!r} must be 'none', 'metric' or 'grad'")
    logits = packed_response_logits(model, batch) if packed else response_logits(model, batch)
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
