"""The engine actor for real: vLLM's CPU engine in a Ray actor, a tiny random Llama, fp32.

Proves that (1) behaviour log-probs are the model's log-probs of the sampled tokens (HF forward, 1e-3),
(2) a weight update changes the policy, reads back identical to the learner's tensors and is versioned,
(3) the tied-embedding path syncs the lm_head that vLLM-CPU keeps apart from the embedding.
"""

from __future__ import annotations

import os

import pytest
import torch

from grpo_lambda.config import RolloutConfig
from grpo_lambda.rollout.group import engine_actor_cls
from grpo_lambda.rollout.sampling import SamplingSpec
from grpo_lambda.rollout.vllm_engine import TCMALLOC_PATH

pytestmark = [pytest.mark.integration]

LOGP_ATOL = 1e-3
ENGINE_KWARGS = {"dtype": "float32", "seed": 0, "max_model_len": 512}


def start_engine(model_dir, **rollout):
    """An engine actor (1 CPU) for `model_dir` with a small KV cache; `rollout` overrides RolloutConfig fields."""
    return engine_actor_cls(num_cpus=1).remote(str(model_dir), RolloutConfig(kv_cache_gib=0.25, **rollout),
                                               **ENGINE_KWARGS)  # fmt: skip


def _hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def _hf_logp(model, sample) -> torch.Tensor:
    """log π(response_ids[t] | prompt, response_ids[:t]) from a plain HF forward."""
    ids = torch.tensor([sample.prompt_ids + sample.response_ids])
    logits = model(ids).logits[0, len(sample.prompt_ids) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(sample.response_ids)[:, None])[:, 0]


def _max_logp_error(model, samples) -> float:
    return max((_hf_logp(model, s) - torch.tensor(s.response_logp)).abs().max().item() for s in samples)


def _join_sync_group(ray_local, handles, ranks_per_engine: int):
    """A gloo sync group with this process as rank 0 (the learner's place) and every engine worker after it."""
    from grpo_lambda.distributed.rendezvous import find_free_port
    from grpo_lambda.distributed.sync_protocol import new_sync_group

    port, world = find_free_port(), 1 + len(handles) * ranks_per_engine
    joining = [h.init_weight_sync.remote("127.0.0.1", port, world, 1 + i * ranks_per_engine, backend="gloo",
                                         timeout_s=60) for i, h in enumerate(handles)]  # fmt: skip
    group = new_sync_group("gloo", "127.0.0.1", port, 0, world, 60)
    ray_local.get(joining)
    return group


def _perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: t + scale * torch.randn(t.shape, generator=gen) for name, t in state.items()}


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = [
        "What is 12 + 7? Put the answer in \\boxed{}.",
        "Tom has 3 apples and buys 5 more. How many?",
        # Long enough to fill whole KV blocks, which the prefix cache keeps: a weight update must drop them.
        "Let us think step by step. " * 50 + "What is 2 + 2?",
    ]
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in questions
    ]


@pytest.fixture(scope="module")
def worker(ray_local, tiny_model_dir):
    handle = start_engine(tiny_model_dir)
    info = ray_local.get(handle.ready.remote())
    yield handle, info
    ray_local.kill(handle)


@pytest.mark.timeout(300)
def test_samples_carry_the_models_logprobs(worker, prompts, tiny_model_dir, ray_local):
    handle, info = worker
    assert info["weights_version"] == 0 and info["on_cpu"]
    assert info["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert info["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert info["tcmalloc_loaded"] == os.path.exists(TCMALLOC_PATH)  # preloaded through the runtime_env

    spec = SamplingSpec(n=4, max_tokens=24, seed=0)
    groups = ray_local.get(handle.generate.remote(prompts, spec))
    assert [len(g) for g in groups] == [4, 4, 4]
    for prompt, group in zip(prompts, groups, strict=True):
        assert len({tuple(s.response_ids) for s in group}) > 1  # n distinct samples, not one repeated
        for s in group:
            assert s.prompt_ids == prompt
            assert 1 <= len(s.response_ids) == len(s.response_logp) <= spec.max_tokens
            assert s.finish_reason in ("stop", "length")
            assert all(lp <= 0.0 for lp in s.response_logp)
    assert _max_logp_error(_hf_model(tiny_model_dir), [s for g in groups for s in g]) < LOGP_ATOL

    again = ray_local.get(handle.generate.remote(prompts, spec))  # same seed: same samples
    assert [[s.response_ids for s in g] for g in again] == [[s.response_ids for s in g] for g in groups]


@pytest.mark.timeout(300)
def test_seeded_sampling_of_more_prompt_tokens_than_one_scheduler_step(worker, tiny_model_dir, ray_local):
    """40 distinct prompts of ~450 tokens (~18k prompt tokens, over vLLM's 4096-token step budget), sampled with a
    seed: with chunked prefill, a prompt cut across steps made vLLM rewind its seeded CPU generator and crash
    ("CPU Generator does not use offset"); the adapter turns chunked prefill off on CPUs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_prompts = [tok(f"Problem {i}: " + "add the numbers one by one and check. " * 30)["input_ids"][:450]
                    for i in range(40)]  # fmt: skip
    assert sum(map(len, long_prompts)) > 4 * 4096
    spec = SamplingSpec(n=2, max_tokens=8, temperature=1.0, seed=3)
    groups = ray_local.get(worker[0].generate.remote(long_prompts, spec))
    assert [len(g) for g in groups] == [2] * 40
    again = ray_local.get(worker[0].generate.remote(long_prompts, spec))
    assert [[s.response_ids for s in g] for g in again] == [[s.response_ids for s in g] for g in groups]


@pytest.mark.timeout(300)
def test_load_weights_changes_the_policy_and_reads_back_equal(worker, prompts, tiny_model_dir, ray_local):
    handle, _ = worker
    hf = _hf_model(tiny_model_dir)
    spec = SamplingSpec(n=2, max_tokens=16, seed=1)
    before = ray_local.get(handle.generate.remote(prompts, spec))
    assert ray_local.get(handle.verify_weights.remote(hf.state_dict())) == []  # engine == weights on disk

    new_state = _perturbed(hf.state_dict(), seed=7)
    assert len(ray_local.get(handle.verify_weights.remote(new_state))) == len(new_state)
    version = ray_local.get(handle.weights_version.remote()) + 1
    assert ray_local.get(handle.load_weights.remote(ray_local.put(new_state), version)) == version
    assert ray_local.get(handle.weights_version.remote()) == version
    assert ray_local.get(handle.verify_weights.remote(new_state)) == []
    checksums = ray_local.get(handle.weight_checksums.remote(["model.norm.weight"]))
    assert checksums["model.norm.weight"] == pytest.approx(
        float(new_state["model.norm.weight"].double().sum())
    )

    ray_local.get(
        [handle.sleep.remote(), handle.wake_up.remote()]
    )  # no-ops on CPU; must not break the engine
    after = ray_local.get(handle.generate.remote(prompts, spec))
    hf.load_state_dict(new_state)
    assert _max_logp_error(hf, [s for g in after for s in g]) < LOGP_ATOL  # now samples the new policy
    assert [s.response_logp for s in before[0]] != [s.response_logp for s in after[0]]

    with pytest.raises(Exception, match="version must increase"):
        ray_local.get(handle.load_weights.remote(new_state, version))

    # A bucket (one layer's tensors) updates that layer and leaves the others as they were.
    bucket = {name: t + 0.01 for name, t in new_state.items() if ".layers.1." in name}
    ray_local.get(handle.load_weights.remote(bucket, version + 1))
    assert ray_local.get(handle.verify_weights.remote({**new_state, **bucket})) == []


@pytest.mark.timeout(300)
def test_tied_embeddings_sync_the_lm_head(ray_local, tiny_tied_model_dir, prompts):
    """HF's named_parameters() of a tied model has no lm_head.weight; the engine must still move its lm_head."""
    handle = start_engine(tiny_tied_model_dir)
    try:
        ray_local.get(handle.ready.remote())
        hf = _hf_model(tiny_tied_model_dir)
        new_params = _perturbed(dict(hf.named_parameters()), seed=3)
        assert "lm_head.weight" not in new_params
        ray_local.get(handle.load_weights.remote(new_params, 1))
        assert ray_local.get(handle.verify_weights.remote(new_params)) == []  # includes lm_head = embedding
        hf.load_state_dict(new_params, strict=False)
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
        groups = ray_local.get(handle.generate.remote(prompts, SamplingSpec(n=2, max_tokens=16, seed=0)))
        assert _max_logp_error(hf, [s for g in groups for s in g]) < LOGP_ATOL
    finally:
        ray_local.kill(handle)


@pytest.mark.timeout(300)
def test_broadcast_streams_weights_into_every_engine(ray_local, tiny_tied_model_dir, prompts):
    """This process plays learner rank 0 of a gloo sync group and streams a tied model's parameters in small
    buckets to two engines: both read back equal (lm_head included) and sample the new policy."""
    from grpo_lambda.distributed.sync_protocol import send_weights

    handles = [start_engine(tiny_tied_model_dir) for _ in range(2)]
    try:
        ray_local.get([h.ready.remote() for h in handles])
        group = _join_sync_group(ray_local, handles, ranks_per_engine=1)

        hf = _hf_model(tiny_tied_model_dir)
        new_params = _perturbed(dict(hf.named_parameters()), seed=5)
        assert "lm_head.weight" not in new_params
        receiving = [h.receive_weights.remote(1) for h in handles]
        sent = send_weights(
            group, new_params.items(), 1, bucket_bytes=64 << 10, dtype=torch.float32
        ).as_dict()
        assert sent["buckets"] > 2 and sent["tensors"] == len(new_params)
        assert ray_local.get(receiving) == [sent, sent]
        assert ray_local.get([h.weights_version.remote() for h in handles]) == [1, 1]
        assert ray_local.get([h.verify_weights.remote(new_params) for h in handles]) == [[], []]

        hf.load_state_dict(new_params, strict=False)
        groups = ray_local.get(handles[1].generate.remote(prompts, SamplingSpec(n=2, max_tokens=16, seed=0)))
        assert _max_logp_error(hf, [s for g in groups for s in g]) < LOGP_ATOL
    finally:
        for h in handles:
            ray_local.kill(h)


@pytest.mark.timeout(300)
def test_tensor_parallel_engine_receives_the_broadcast_and_reads_back_whole(
    ray_local, tiny_tied_model_dir, prompts
):
    """tensor_parallel_size=2 on vLLM-CPU with the tied, 1-KV-head model: each TP worker joins the sync group as
    its own rank, and the read-back joins the workers' shards (the KV head is replicated over both ranks)."""
    from grpo_lambda.distributed.sync_protocol import send_weights

    handle = start_engine(tiny_tied_model_dir, tensor_parallel_size=2)
    try:
        ray_local.get(handle.ready.remote())
        hf = _hf_model(tiny_tied_model_dir)
        assert ray_local.get(handle.verify_weights.remote(dict(hf.named_parameters()))) == []

        group = _join_sync_group(ray_local, [handle], ranks_per_engine=2)
        new_params = _perturbed(dict(hf.named_parameters()), seed=9)
        assert (
            len(ray_local.get(handle.verify_weights.remote(new_params))) == len(new_params) + 1
        )  # + lm_head
        receiving = handle.receive_weights.remote(1)
        sent = send_weights(
            group, new_params.items(), 1, bucket_bytes=64 << 10, dtype=torch.float32
        ).as_dict()
        assert ray_local.get(receiving) == sent
        assert ray_local.get(handle.verify_weights.remote(new_params)) == []

        hf.load_state_dict(new_params, strict=False)
        groups = ray_local.get(handle.generate.remote(prompts, SamplingSpec(n=2, max_tokens=16, seed=0)))
        assert _max_logp_error(hf, [s for g in groups for s in g]) < LOGP_ATOL
    finally:
        ray_local.kill(handle)
