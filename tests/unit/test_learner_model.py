"""Policy model helpers on a tiny random Llama (plain transformers, no DeepSpeed): padded log-probs must equal
the log-probs of each unpadded sequence."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from grpo_lambda.config import LoraConfig
from grpo_lambda.learner.batch import build_batch, pad_response_dim
from grpo_lambda.learner.model import load_causal_lm, response_logp


def save_tiny_llama(path, *, tie: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=tie,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_causal_lm(model_dir, dtype="float32")


PROMPTS = [[5, 6, 7, 8], [9], [10, 11]]
RESPONSES = [[20, 21], [22, 23, 24, 25, 26], [27, 28, 29]]


def unpadded_logp(model, prompt, response, temperature=1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_padded_logp_equals_unpadded(model, temperature):
    batch = build_batch(PROMPTS, RESPONSES, [0.0] * 3)
    with torch.no_grad():
        logp, _ = response_logp(model, batch, temperature=temperature)
    assert logp.dtype == torch.float32 and logp.shape == (3, 5)
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        torch.testing.assert_close(
            logp[b, : len(r)], unpadded_logp(model, p, r, temperature), rtol=1e-5, atol=1e-5
        )
        assert (logp[b, len(r) :] == 0).all()


def test_compacted_micro_batch_gives_the_same_logp(model):
    batch = build_batch(PROMPTS, RESPONSES, [0.0] * 3)
    with torch.no_grad():
        full, _ = response_logp(model, batch)
        part, _ = response_logp(model, batch.select([0, 2]).compact())
    assert part.shape == (2, 3)
    torch.testing.assert_close(pad_response_dim(part, 5), full[[0, 2]], rtol=1e-5, atol=1e-5)


def test_gradient_is_finite_through_left_padding(model_dir):
    model = load_causal_lm(model_dir, dtype="float32")
    batch = build_batch(PROMPTS, RESPONSES, [0.0] * 3)
    logp, entropy = response_logp(model, batch, entropy="grad")
    (logp.sum() + entropy.sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_entropy_modes_agree(model):
    batch = build_batch(PROMPTS, RESPONSES, [0.0] * 3)
    with torch.no_grad():
        _, ent_metric = response_logp(model, batch, entropy="metric", temperature=0.7)
        _, ent_grad = response_logp(model, batch, entropy="grad", temperature=0.7)
        _, none = response_logp(model, batch)
    assert none is None
    torch.testing.assert_close(ent_metric, ent_grad)
    valid = batch.response_mask
    # A random 512-way softmax at temperature 0.7 is close to uniform: entropy just below log(512).
    assert (ent_metric[valid] > 5.0).all() and (ent_metric[valid] <= torch.log(torch.tensor(512.0))).all()
    assert (ent_metric[~valid] == 0).all()
    with pytest.raises(ValueError, match="entropy='yes'"):
        response_logp(model, batch, entropy="yes")


def test_load_options(model_dir, tmp_path):
    ref = load_causal_lm(model_dir, dtype="bfloat16", trainable=False)
    assert (
        ref.dtype == torch.bfloat16
        and not any(p.requires_grad for p in ref.parameters())
        and not ref.training
    )
    gc = load_causal_lm(model_dir, dtype="float32", gradient_checkpointing=True)
    assert gc.is_gradient_checkpointing and gc.config.use_cache is False
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype 'float16'"):
        load_causal_lm(model_dir, dtype="float16")


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lora_without_peft_says_what_to_do(model_dir):
    with pytest.raises(ImportError, match="pip install peft"):
        load_causal_lm(model_dir, dtype="float32", lora=LoraConfig(rank=4, target_modules=["q_proj"]))


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_lora_merged_weights_reproduce_the_adapted_model(model_dir):
    from transformers import AutoModelForCausalLM

    from grpo_lambda.learner.weights import merged_lora_weights

    model = load_causal_lm(
        model_dir, dtype="float32", lora=LoraConfig(rank=4, target_modules=["q_proj", "v_proj"])
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # make the adapters matter
    merged = merged_lora_weights(model)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plain.load_state_dict(merged, strict=True)
    batch = build_batch(PROMPTS, RESPONSES, [0.0] * 3)
    with torch.no_grad():
        torch.testing.assert_close(
            response_logp(plain, batch)[0], response_logp(model, batch)[0], rtol=1e-5, atol=1e-5
        )
