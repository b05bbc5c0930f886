"""grpo_lambda.export without Ray or DeepSpeed: finding the checkpoint, its errors, the command line, and the
whole export on hand-made ZeRO-0-layout checkpoints (the module state dict in mp_rank_00_model_states.pt, as
DeepSpeed writes it without ZeRO). The real ZeRO 2/3 and LoRA runs are in tests/integration/test_export.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from grpo_lambda import checkpoint
from grpo_lambda.config import Config, LoraConfig, ModelConfig
from grpo_lambda.export import (
    EXPORT_INFO_FILE,
    ExportError,
    build_parser,
    export_policy,
    find_checkpoint,
    load_run_config,
    main,
)


def write_config(run_dir, cfg: Config) -> None:
    """config.yaml as tracking.Tracker writes it (dataclasses.asdict through OmegaConf)."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg))))


def make_run(run_dir, model_dir, *, lora_rank: int = 0, step: int = 3, dtype: str = "float32"):
    """A run folder whose checkpoint holds the learner's model (LoRA-wrapped when lora_rank > 0) with every
    parameter perturbed (LoRA B too, so the adapter is not a no-op). Returns the perturbed model."""
    from grpo_lambda.learner.model import load_causal_lm

    lora = LoraConfig(rank=lora_rank, alpha=8.0, target_modules=["q_proj", "v_proj"])
    write_config(run_dir, Config(model=ModelConfig(path=str(model_dir), dtype=dtype, lora=lora)))
    model = load_causal_lm(model_dir, dtype="float32", lora=lora if lora_rank else None)
    gen = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ds_dir = checkpoint.step_dir(run_dir, step) / "learner" / "model"
    ds_dir.mkdir(parents=True)
    torch.save({"module": model.state_dict(), "buffer_names": []}, ds_dir / "mp_rank_00_model_states.pt")
    checkpoint.commit(run_dir, step, {"step": step})
    return model


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    return run_dir, make_run(run_dir, tiny_model_dir)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    pytest.importorskip("peft")
    run_dir = tmp_path_factory.mktemp("runs") / "lora"
    return run_dir, make_run(run_dir, tiny_model_dir, lora_rank=4)


def load_hf(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------- finding
def test_find_checkpoint_from_a_run_its_checkpoints_folder_or_a_step_folder(full_run):
    run_dir, _ = full_run
    step = run_dir / "checkpoints" / "step_000003"
    assert find_checkpoint(run_dir) == step
    assert find_checkpoint(run_dir / "checkpoints") == step
    assert find_checkpoint(step) == step


def test_find_checkpoint_errors_name_the_path_and_what_to_do(tmp_path, tiny_model_dir):
    with pytest.raises(ExportError, match="does not exist: pass a run folder"):
        find_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        find_checkpoint(tmp_path / "file.txt")
    with pytest.raises(ExportError, match="neither a run folder .* nor a checkpoint folder"):
        find_checkpoint(tmp_path)

    run_dir = tmp_path / "run"
    write_config(run_dir, Config(model=ModelConfig(path=str(tiny_model_dir))))
    with pytest.raises(ExportError, match=f"run folder {run_dir} has no checkpoints yet"):
        find_checkpoint(run_dir)
    incomplete = checkpoint.step_dir(run_dir, 5)
    (incomplete / "learner" / "model").mkdir(parents=True)  # a save killed before driver.json
    with pytest.raises(ExportError, match="no complete checkpoint yet .*latest is missing"):
        find_checkpoint(run_dir)
    with pytest.raises(ExportError, match="incomplete checkpoint .*no driver.json"):
        find_checkpoint(incomplete)
    (incomplete / "driver.json").write_text("{}")
    with pytest.raises(ExportError, match="has no learner weights"):
        find_checkpoint(incomplete)


def test_a_missing_config_yaml_is_named(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir)
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ExportError, match="config.yaml is missing"):
        export_policy(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_config_is_read_back_even_when_other_sections_no_longer_fit(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    write_config(run_dir, Config(model=ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")))
    text = (run_dir / "config.yaml").read_text().replace("data:\n", "data:\n  renamed_since: 3\n", 1)
    (run_dir / "config.yaml").write_text(text)
    cfg = load_run_config(run_dir)
    assert cfg.model.dtype == "bfloat16" and cfg.model.path == str(tiny_model_dir)


# ---------------------------------------------------------------------------------------------- exporting
def test_export_writes_a_hugging_face_folder_with_the_checkpoint_weights(full_run, tmp_path):
    from transformers import AutoTokenizer

    run_dir, model = full_run
    out = export_policy(run_dir, tmp_path / "out")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", EXPORT_INFO_FILE} <= names  # fmt: skip
    assert not list(tmp_path.glob(".out.*"))  # the temporary sibling is gone
    exported = load_hf(out)
    assert exported.config.use_cache  # the learner turns the KV cache off; the export restores the base's
    expected = model.state_dict()
    for name, value in exported.state_dict().items():
        assert torch.equal(value, expected[name]), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["step"] == 3 and info["dtype"] == "float32" and info["lora_merged"] is False
    assert info["source_checkpoint"] == str((run_dir / "checkpoints" / "step_000003").resolve())
    assert info["parameters"] == sum(p.numel() for p in exported.parameters())


def test_dtype_bfloat16(full_run, tmp_path):
    run_dir, model = full_run
    out = export_policy(run_dir / "checkpoints" / "step_000003", tmp_path / "bf16", dtype="bfloat16")
    exported = load_hf(out, dtype="auto")
    assert exported.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    weight = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(exported.state_dict()["model.layers.0.mlp.up_proj.weight"], weight.to(torch.bfloat16))


def test_a_non_empty_output_is_refused_and_force_replaces_it(full_run, tmp_path):
    run_dir, _ = full_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty: .*--force"):
        export_policy(run_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_policy(run_dir, out, force=True, quiet=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folders left


def test_an_interrupted_export_leaves_the_old_folder_and_no_debris(full_run, tmp_path, monkeypatch):
    import grpo_lambda.export as export

    run_dir, _ = full_run
    out = export_policy(run_dir, tmp_path / "out", quiet=True)
    before = (out / EXPORT_INFO_FILE).read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_tokenizer", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_policy(run_dir, out, force=True, quiet=True)
    with pytest.raises(RuntimeError, match="disk full"):
        export_policy(run_dir, tmp_path / "new", quiet=True)
    assert (out / EXPORT_INFO_FILE).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_lora_is_merged_into_the_base_weights(lora_run, tmp_path):
    run_dir, model = lora_run
    out = export_policy(run_dir, tmp_path / "merged")
    exported = load_hf(out).state_dict()
    assert not any("lora" in name for name in exported)
    state = model.state_dict()
    prefix = "base_model.model.model.layers.1.self_attn.q_proj."
    w, a, b = (state[prefix + n] for n in ("base_layer.weight", "lora_A.default.weight",
                                           "lora_B.default.weight"))  # fmt: skip
    expected = w + (8.0 / 4) * b @ a  # W + (alpha / r) B A, computed here, not by peft
    got = exported["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # untouched modules keep their (perturbed) base weights exactly
    assert torch.equal(exported["model.layers.1.mlp.up_proj.weight"],
                       state["base_model.model.model.layers.1.mlp.up_proj.weight"])  # fmt: skip
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["lora_merged"] is True and info["lora_rank"] == 4


def test_adapter_only_loads_with_peft_and_matches_the_merged_model(lora_run, tmp_path, tiny_model_dir):
    from peft import PeftModel

    run_dir, model = lora_run
    merged = load_hf(export_policy(run_dir, tmp_path / "merged", quiet=True))
    out = export_policy(run_dir, tmp_path / "adapter", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(tiny_model_dir)
    # the checkpoint's base weights were perturbed too: load the adapter onto them, not onto the pristine base
    base = load_hf(tiny_model_dir)
    base.load_state_dict({k.replace("base_model.model.", "").replace("base_layer.", ""): v
                          for k, v in model.state_dict().items() if "lora_" not in k})  # fmt: skip
    peft_model = PeftModel.from_pretrained(base, out).eval()
    ids = torch.randint(3, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, rtol=0, atol=1e-5)


def test_adapter_only_needs_a_lora_run(full_run, tmp_path):
    with pytest.raises(ExportError, match="model.lora.rank=0 .*drop --adapter-only"):
        export_policy(full_run[0], tmp_path / "out", adapter_only=True)


def test_a_checkpoint_that_does_not_fit_the_config_is_rejected(full_run, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir)  # full weights, but the config now claims LoRA
    write_config(run_dir, Config(model=ModelConfig(path=str(tiny_model_dir), lora=LoraConfig(rank=4))))
    with pytest.raises(ExportError, match="does not fit the model rebuilt from the run's config"):
        export_policy(run_dir, tmp_path / "out")


def test_an_unresolvable_base_model_asks_for_base_model(full_run, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    make_run(run_dir, tiny_model_dir)
    write_config(run_dir, Config(model=ModelConfig(path=str(tmp_path / "moved-away"))))
    with pytest.raises(ExportError, match="not found here: .*--base-model"):
        export_policy(run_dir, tmp_path / "out")
    out = export_policy(run_dir, tmp_path / "out", base_model=tiny_model_dir, quiet=True)
    assert (out / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- command line
def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--adapter-only", "--dtype", "--force", "--base-model", "run folder"):
        assert option in text


def test_cli_exports_and_prints_one_summary_line(full_run, tmp_path, capsys):
    assert main([str(full_run[0]), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "out") in lines[0] and "bfloat16" in lines[0]


def test_cli_errors_exit_2_with_one_readable_line(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export error: ") and str(tmp_path) in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(tmp_path / "out"), "--dtype", "float16"])
    assert exit_info.value.code == 2  # argparse: invalid choice
