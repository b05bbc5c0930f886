"""Reading a vLLM engine's effective weights back: the identity probe (a check, never on the training path).

vLLM's CPU build re-packs every linear layer into oneDNN/SGL kernels after loading and keeps no readable weight, so
`read_effective_weights` probes each layer with an identity matrix, W^T = apply(I) (exact: every output is one
product by 1.0), and splits fused layers (qkv_proj, gate_up_proj) back into their Hugging Face names. With tensor
parallelism each worker reads its shard and `merge_weight_shards` joins them. This is the module that reaches into
vLLM's internals (written against vLLM 0.32: `LinearBase.quant_method.apply`, `output_partition_sizes`,
`num_kv_head_replicas`, `VocabParallelEmbedding.shard_indices`); `rollout.sync_check` and the tests use it to prove
that an engine samples from exactly the learner's weights.
"""

from __future__ import annotations

import torch

WeightShard = tuple[torch.Tensor, int | None, int]  # (this worker's part, split dim or None, rank stride)


def read_effective_weights(model: torch.nn.Module, names: list[str] | None = None) -> dict[str, WeightShard]:
    """This worker's part of each weight the vLLM model computes with, HF-named, on CPU, read through its kernels:
    {name: (part, dim, stride)} where `dim` is the dimension tensor-parallel ranks split the weight along (None:
    every rank holds all of it) and the full weight is the concatenation of every `stride`-th rank's part
    (stride > 1 when a KV head is replicated over ranks). `merge_weight_shards` joins the workers' answers.

    Linear layers and the lm_head: W = apply(layer, I)^T (the rank's rows for column-parallel layers, its columns
    for row-parallel ones), split by output partition per the `packed_modules_mapping` (qkv_proj -> q_proj,
    k_proj, v_proj). Embeddings: the rank's rows of the original vocabulary. Other parameters: as stored.
    """
    from vllm.model_executor.layers.linear import LinearBase, QKVParallelLinear, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    wanted = None if names is None else set(names)
    packed = getattr(model, "packed_modules_mapping", {})
    found: dict[str, WeightShard] = {}
    covered: set[str] = set()  # vLLM parameter names read through their module
    for mod_name, module in model.named_modules():
        if not isinstance(module, LinearBase | VocabParallelEmbedding):
            continue
        covered.update((f"{mod_name}.weight", f"{mod_name}.bias"))
        split = getattr(module, "tp_size", 1) > 1
        if isinstance(module, LinearBase):
            module_path, _, leaf = mod_name.rpartition(".")
            parts = packed.get(leaf)
            part_names = [f"{module_path}.{p}" for p in parts] if parts else [mod_name]
            if wanted is not None and not wanted & {
                f"{p}.{s}" for p in part_names for s in ("weight", "bias")
            }:
                continue  # probing is not free: only the asked-for layers
            sizes = list(module.output_partition_sizes)
            row = isinstance(module, RowParallelLinear)
            weight_dim, bias_dim = (1, None) if row else (0, 0)
            weights, biases = _probe_linear(module).split(sizes), _split_bias(module, sizes)
            kv_stride = (
                getattr(module, "num_kv_head_replicas", 1) if isinstance(module, QKVParallelLinear) else 1
            )
            for i, (part, weight, bias) in enumerate(zip(part_names, weights, biases, strict=True)):
                stride = kv_stride if i > 0 else 1  # q_proj is never replicated; k_proj and v_proj may be
                found[f"{part}.weight"] = (weight, weight_dim if split else None, stride)
                if bias is not None:
                    found[f"{part}.bias"] = (bias, bias_dim if split else None, stride)
        else:
            rows = module.shard_indices.num_org_elements  # this rank's rows of the original vocabulary
            if isinstance(module, ParallelLMHead):  # logits = apply(hidden): probe like a linear layer
                eye = torch.eye(module.embedding_dim, dtype=module.weight.dtype, device=module.weight.device)
                weight = module.quant_method.apply(module, eye).t()[:rows]
            else:  # an input embedding is a plain lookup table
                weight = module.weight[:rows]
            found[f"{mod_name}.weight"] = (weight, 0 if split else None, 1)
    for name, param in model.named_parameters(remove_duplicate=False):
        if name not in covered and param.numel() > 0:
            found[name] = (param, None, 1)
    if wanted is not None:
        if missing := wanted - set(found):
            raise KeyError(f"the engine has no weights named {sorted(missing)}")
        found = {name: found[name] for name in wanted}
    return {name: (t.detach().to("cpu").clone(), dim, stride) for name, (t, dim, stride) in found.items()}


def merge_weight_shards(per_rank: list[dict[str, WeightShard]]) -> dict[str, torch.Tensor]:
    """Full weights from every tensor-parallel worker's `read_effective_weights` answer (in rank order)."""
    merged = {}
    for name, (part, dim, stride) in per_rank[0].items():
        if dim is None:
            merged[name] = part
        else:
            merged[name] = torch.cat([shards[name][0] for shards in per_rank[::stride]], dim)
    return merged


def _probe_linear(module) -> torch.Tensor:
    """The [out, in] weight a vLLM linear layer applies: apply(I_in) = I W^T = W^T (bias left out)."""
    dtype = module.weight.dtype if module.weight.is_floating_point() else torch.get_default_dtype()
    eye = torch.eye(module.input_size_per_partition, dtype=dtype, device=module.weight.device)
    return module.quant_method.apply(module, eye).t()


def _split_bias(module, sizes: list[int]) -> list[torch.Tensor | None]:
    bias = getattr(module, "bias", None)
    if bias is None or bias.numel() == 0:
        return [None] * len(sizes)
    return list(bias.split(sizes))


def weight_checksums(named_tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """A cheap fingerprint per tensor (float64 sum of the values): equal weights give equal checksums."""
    return {name: float(t.detach().to(torch.float64).sum()) for name, t in named_tensors.items()}


def mismatched_weights(
    engine: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 0.0
) -> list[str]:
    """Names in `expected` that are missing from `engine`, differ in shape, or differ by more than `atol`.

    Compared in the engine's dtype (a learner's fp32 master weights match a bf16 engine when they round to it).
    """
    bad = []
    for name, want in expected.items():
        got = engine.get(name)
        if got is None or tuple(got.shape) != tuple(want.shape):
            bad.append(name)
            continue
        want = want.detach().to(device=got.device, dtype=got.dtype)
        if atol == 0.0:
            ok = torch.equal(got, want)
        else:
            ok = bool(((got.float() - want.float()).abs() <= atol).all())
        if not ok:
            bad.append(name)
    return sorted(bad)
