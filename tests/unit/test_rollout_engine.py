"""The pure parts of the rollout layer: SamplingSpec, weight comparison, fused-layer completeness, actor
environment. No vLLM engine or Ray here (tests/integration/test_rollout.py runs the real ones)."""

from __future__ import annotations

import os

import pytest
import torch

from grpo_lambda.rollout.group import engine_runtime_env
from grpo_lambda.rollout.sampling import SamplingSpec
from grpo_lambda.rollout.vllm_engine import TCMALLOC_PATH, check_complete_modules, vllm_env_vars
from grpo_lambda.rollout.vllm_readback import merge_weight_shards, mismatched_weights, weight_checksums

LLAMA_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def test_sampling_spec_stop_is_a_tuple_of_strings():
    assert SamplingSpec(stop=["</answer>"]).stop == ("</answer>",)
    with pytest.raises(TypeError, match="single string"):
        SamplingSpec(stop="</answer>")


def test_mismatched_weights_exact_and_tolerant():
    engine = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
    assert mismatched_weights(engine, {"a": torch.ones(2, 3), "b": torch.zeros(4)}) == []
    assert mismatched_weights(engine, {"a": torch.ones(2, 3) + 1e-6}) == ["a"]
    assert mismatched_weights(engine, {"a": torch.ones(2, 3) + 1e-6}, atol=1e-5) == []
    assert mismatched_weights(engine, {"a": torch.ones(3, 2), "c": torch.zeros(1)}) == ["a", "c"]


def test_mismatched_weights_compares_in_the_engine_dtype():
    learner = torch.tensor([1.0 + 2**-12, 3.0])  # differs from 1.0 below bf16 resolution
    engine = {"w": learner.to(torch.bfloat16)}
    assert mismatched_weights(engine, {"w": learner}) == []
    assert mismatched_weights(engine, {"w": learner + 0.1}) == ["w"]


def test_weight_checksums_tell_tensors_apart():
    sums = weight_checksums({"a": torch.ones(3), "b": torch.arange(4.0)})
    assert sums == {"a": 3.0, "b": 6.0}


def test_check_complete_modules_requires_all_parts_of_a_fused_layer():
    full = {f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    check_complete_modules(full | {"model.norm.weight"}, LLAMA_PACKED)
    with pytest.raises(ValueError, match=r"k_proj.*same load_weights call"):
        check_complete_modules({"model.layers.0.self_attn.q_proj.weight"}, LLAMA_PACKED)
    with pytest.raises(ValueError, match="up_proj"):
        check_complete_modules({"model.layers.3.mlp.gate_proj.weight"}, LLAMA_PACKED)


def test_actor_environment():
    cpu = engine_runtime_env(num_gpus=0)["env_vars"]
    assert cpu["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert cpu["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert cpu["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"
    assert ("LD_PRELOAD" in cpu) == os.path.exists(TCMALLOC_PATH)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in vllm_env_vars(on_cpu=False)
    assert engine_runtime_env(0, {"X": "1"})["env_vars"]["X"] == "1"


def test_merge_weight_shards_joins_split_dims_and_skips_replicated_kv_heads():
    full_q, full_k = torch.arange(24.0).view(4, 6), torch.arange(12.0).view(2, 6)
    o_proj, norm = torch.arange(24.0).view(6, 4), torch.ones(6)
    per_rank = [  # 4 tensor-parallel ranks
        {
            "q": (full_q[r : r + 1], 0, 1),  # column-parallel: each rank holds rows
            "k": (full_k[r // 2 : r // 2 + 1], 0, 2),  # 2 KV heads over 4 ranks: each head held by 2 ranks
            "o": (o_proj[:, r : r + 1], 1, 1),  # row-parallel: each rank holds columns
            "norm": (norm, None, 1),  # replicated
        }
        for r in range(4)
    ]
    merged = merge_weight_shards(per_rank)
    assert torch.equal(merged["q"], full_q) and torch.equal(merged["k"], full_k)
    assert torch.equal(merged["o"], o_proj) and torch.equal(merged["norm"], norm)
    single = merge_weight_shards([{"w": (full_q, None, 1)}])
    assert torch.equal(single["w"], full_q)
