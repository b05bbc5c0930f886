"""Tiny random Llama models with an offline byte-level BPE tokenizer, for tests and CPU smoke runs.

`build_tiny_model` writes an ordinary Hugging Face folder (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a ChatML chat template) that transformers, DeepSpeed and vLLM all load. Nothing is
downloaded: the tokenizer is trained in-process on a small built-in corpus of digits, arithmetic and English.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from grpo_lambda.models.cache import build_folder_atomically

# vLLM's CPU attention kernels only support these head sizes; any other head_dim crashes the engine at start.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# ChatML, as SmolLM2 and Qwen use: ids 0, 1, 2 are the special tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = SPECIAL_TOKENS
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BUILD_INFO_FILE = "build_info.json"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    BUILD_INFO_FILE,
)

_WORDS = (
    "the a an of to and in is it that for on with as was be by this are or from at which not have has had "
    "but all we can one two three four five six seven eight nine ten hundred thousand number numbers sum "
    "product difference quotient remainder total each every how many much more less than equal equals "
    "answer question problem solve solution step steps first then next finally therefore so let us think "
    "find compute calculate what value integer real positive negative even odd prime divisible factor "
    "times plus minus divided multiply add subtract square root cube power percent fraction half third "
    "apples oranges books students teacher class school money dollars cents price cost buy sells bought "
    "day days week weeks hour hours minute minutes year years old age tom mary john anna he she they "
    "his her their has gives gets left remaining box boxes bag bags car cars miles speed rate time "
    "you are helpful assistant user system please put your final within reason carefully check"
)

_TEMPLATES = (
    "What is {a} + {b}? The answer is \\boxed{{{s}}}.",
    "{a} + {b} = {s}",
    "{a} - {b} = {d}",
    "{a} * {b} = {p}",
    "Compute {a} times {b}. Let us think step by step. {a} * {b} = {p}, so the answer is \\boxed{{{p}}}.",
    "Tom has {a} apples and buys {b} more. How many apples does he have? {a} + {b} = {s}. \\boxed{{{s}}}",
    "If x = {a} and y = {b}, then x + y = {s} and x - y = {d}. Final answer: $\\boxed{{{s}}}$",
    "The sum of {a} and {b} is {s}. The product is {p}.",
    "Solve: {a}/{b}. The fraction \\frac{{{a}}}{{{b}}} is the answer.",
)


def _training_corpus(num_lines: int = 4000) -> list[str]:
    """Deterministic text: arithmetic with \\boxed{} answers, English words, ChatML-shaped turns."""
    rng = random.Random(1234)
    words = _WORDS.split()
    lines = []
    for i in range(num_lines):
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        line = _TEMPLATES[i % len(_TEMPLATES)].format(a=a, b=b, s=a + b, d=a - b, p=a * b)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        lines.append(line)
        lines.append(sentence.capitalize() + rng.choice((".", "?", "!", ":")))
    return lines


def build_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE tokenizer offline (about 0.05 s) and wrap it for transformers.

    Digits are split one per token (like Qwen / SmolLM2), so numbers and `\\boxed{12}` tokenize predictably.
    Returns a `transformers.PreTrainedTokenizerFast` with ChatML special tokens and chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least 259 tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.02,
) -> Path:
    """Write a random LlamaForCausalLM (fp32 safetensors) plus tokenizer to `out_dir` and return its path.

    Deterministic for the arguments; idempotent (an existing complete folder built with the same arguments
    is returned as is); atomic (built in a temporary sibling folder, then renamed into place).
    `vocab_size` is the BPE target; the model's vocabulary is exactly the tokenizer's, so every id decodes.
    """
    out_dir = Path(out_dir)
    head_dim, rest = divmod(hidden_size, num_heads)
    if rest or head_dim not in VLLM_CPU_HEAD_SIZES:
        raise ValueError(
            f"hidden_size / num_heads = {hidden_size} / {num_heads} must be one of {VLLM_CPU_HEAD_SIZES} "
            "(vLLM CPU attention head sizes); e.g. hidden_size=128, num_heads=2"
        )
    num_kv_heads = num_kv_heads or num_heads
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    build_info = {
        "builder": "grpo_lambda.models.tiny.build_tiny_model",
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "initializer_range": initializer_range,
    }
    if out_dir.exists():
        _check_existing(out_dir, build_info)
        return out_dir

    if not build_folder_atomically(out_dir, lambda tmp: _write_model(tmp, build_info)):
        _check_existing(
            out_dir, build_info
        )  # another builder won the race: it must have built the same model
    return out_dir


def _write_model(folder: Path, build_info: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(build_info["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=build_info["hidden_size"],
        intermediate_size=build_info["intermediate_size"],
        num_hidden_layers=build_info["num_layers"],
        num_attention_heads=build_info["num_heads"],
        num_key_value_heads=build_info["num_kv_heads"],
        head_dim=build_info["hidden_size"] // build_info["num_heads"],
        max_position_embeddings=build_info["max_position_embeddings"],
        rms_norm_eps=1e-6,
        initializer_range=build_info["initializer_range"],
        tie_word_embeddings=build_info["tie_word_embeddings"],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(build_info["seed"])
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # "TokenizersBackend" is transformers-5 only; the generic fast class name loads in 4.x as well.
    tok_config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_file.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
    (folder / BUILD_INFO_FILE).write_text(json.dumps(build_info, indent=2, sort_keys=True) + "\n")


def _check_existing(out_dir: Path, build_info: dict) -> None:
    missing = [f for f in REQUIRED_FILES if not (out_dir / f).is_file()]
    if missing:
        raise FileExistsError(
            f"{out_dir} exists but is not a complete tiny model (missing {missing}); "
            "delete it or choose another out_dir"
        )
    found = json.loads((out_dir / BUILD_INFO_FILE).read_text())
    if found != build_info:
        diff = {k: (found.get(k), v) for k, v in build_info.items() if found.get(k) != v}
        raise FileExistsError(
            f"{out_dir} holds a tiny model built with other arguments (found, wanted): {diff}; "
            "delete it or choose another out_dir"
        )
