"""The evaluate CLI's pieces that need no Ray: its config, resuming from samples.jsonl, the settings check."""

from __future__ import annotations

import json

import pytest

from grpo_lambda.config import ConfigError, load_config
from grpo_lambda.config.loading import check_overrides_or_exit
from grpo_lambda.config.schema import DATA_DIR_ENV


@pytest.fixture
def config_data_dir(tmp_path, monkeypatch):
    """A data folder ($GRPO_LAMBDA_DATA_DIR) holding an empty file for every data file the evaluate config and
    data=gsm8k name: the config checks only look for the files, so these tests need no datasets."""
    names = set()
    for overrides, config_name in (([], "evaluate"), (["data=gsm8k"], "config")):
        data = load_config(overrides, config_name=config_name, check_files=False).data
        names |= {*data.train_files, *data.eval_files}
    folder = tmp_path / "data"
    folder.mkdir()
    for name in names:
        (folder / name).touch()
    monkeypatch.setenv(DATA_DIR_ENV, str(folder))
    return folder


def test_evaluate_config_has_the_paper_defaults():
    cfg = load_config([], config_name="evaluate", check_files=False)
    e = cfg.eval
    assert (e.samples_per_prompt, e.temperature, e.top_p) == (16, 0.6, 0.95)
    assert {"aime24", "math500", "olympiadbench", "minerva_math", "amc23"} <= set(e.datasets)


def test_evaluate_config_errors_name_the_key(capsys, config_data_dir):
    with pytest.raises(SystemExit) as exc:
        check_overrides_or_exit(["eval.sampels_per_prompt=4"], config_name="evaluate")
    assert exc.value.code == 2
    assert "eval.sampels_per_prompt" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="eval.samples_per_prompt"):
        load_config(
            ["eval.temperature=0", "eval.samples_per_prompt=4"], config_name="evaluate", check_files=False
        )
    with pytest.raises(ConfigError, match=r"eval.datasets\[0\]='gsm8k_tset'.*gsm8k_test"):
        load_config(["eval.datasets=[gsm8k_tset]"], config_name="evaluate")


def _rec(pid, i):
    return {"dataset": "d", "id": pid, "sample": i, "outcome": "wrong"}


def test_load_samples_keeps_complete_prompts_and_drops_a_torn_line(tmp_path):
    from grpo_lambda.evaluate import load_samples

    path = tmp_path / "samples.jsonl"
    lines = [json.dumps(_rec(p, i)) for p, i in (("a", 0), ("a", 1), ("b", 0))]
    path.write_text("\n".join(lines) + "\n" + '{"dataset": "d", "id": "b", "sam')
    done = load_samples(path, k=2)
    assert list(done) == [("d", "a")]
    assert [json.loads(x) for x in path.read_text().splitlines()] == [_rec("a", 0), _rec("a", 1)]
    assert load_samples(tmp_path / "none.jsonl", k=2) == {}


def test_load_samples_names_a_bad_line_in_the_middle(tmp_path):
    from grpo_lambda.evaluate import EvalError, load_samples

    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(_rec("a", 0)) + "\nnot json\n" + json.dumps(_rec("a", 1)) + "\n")
    with pytest.raises(EvalError, match=r"samples.jsonl:2"):
        load_samples(path, k=2)


def test_settings_must_match_a_previous_evaluation(tmp_path):
    from grpo_lambda.evaluate import EvalError, check_settings

    check_settings(tmp_path, {"temperature": 0.6, "samples_per_prompt": 4})
    (tmp_path / "samples.jsonl").write_text("")
    check_settings(tmp_path, {"temperature": 0.6, "samples_per_prompt": 4})  # same: resumes
    with pytest.raises(EvalError, match=r"temperature: 0.6 -> 1.0"):
        check_settings(tmp_path, {"temperature": 1.0, "samples_per_prompt": 4})


def test_output_dir_defaults_to_the_model_folder_name(tmp_path):
    from grpo_lambda.evaluate import output_dir

    cfg = load_config([f"model.path={tmp_path}/my_run/", "trainer.output_dir=/x"], config_name="evaluate",
                      check_files=False)  # fmt: skip
    assert str(output_dir(cfg)) == "/x/eval/my_run"


def test_only_eval_datasets_take_file_stems(config_data_dir):
    assert {"gsm8k_train.jsonl", "gsm8k_test.jsonl"} <= {p.name for p in config_data_dir.iterdir()}
    load_config(["eval.datasets=[gsm8k_test]"], config_name="evaluate")  # gsm8k_test.jsonl
    with pytest.raises(ConfigError, match=r"data.train_files\[0\]='gsm8k_train' not found"):
        load_config(["data=gsm8k", "data.train_files=[gsm8k_train]"])  # the trainer reads names as given
