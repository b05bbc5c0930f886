"""Config composition (Hydra compose API + dataclass schema) and start-up validation."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from grpo_lambda.config import (
    CONF_DIR,
    Config,
    ConfigError,
    check_overrides_or_exit,
    default_data_dir,
    load_config,
    to_config,
    validate,
)

GROUPS = ["algorithm", "model", "rollout", "learner", "data", "reward", "cluster", "logger", "experiment"]
# Options that need a user-provided model folder (no hub here) get a stand-in path.
PAPER_PRESETS = {  # name -> (model group, training file, response tokens, prompts per step)
    "paper_qwen1.5b_gsm8k": ("qwen2.5-1.5b-instruct", "gsm8k_train.jsonl", 256, 8),
    "paper_qwen1.5b_math12k": ("qwen2.5-1.5b-instruct", "math_train_12k.jsonl", 256, 64),
    "paper_r1distill1.5b_gsm8k": ("deepseek-r1-distill-qwen-1.5b", "gsm8k_train.jsonl", 256, 8),
    "paper_r1distill1.5b_math12k": ("deepseek-r1-distill-qwen-1.5b", "math_train_12k.jsonl", 256, 64),
    "paper_r1distill7b_math12k": ("deepseek-r1-distill-qwen-7b", "math_train_12k.jsonl", 768, 64),
    "paper_authors_code": ("qwen2.5-1.5b-instruct", "math_train_12k.jsonl", 3072, 64),
}
NEEDS_MODEL_PATH = {"qwen2.5_1.5b_instruct", "r1_distill_qwen_1.5b", "r1_distill_qwen_7b", *PAPER_PRESETS}
NO_EVAL = ["data.eval_files=[]", "trainer.eval_every_steps=0", "trainer.eval_before_train=false"]
HAVE_DATA = default_data_dir().joinpath("math_train.jsonl").is_file()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_default_is_cpu_demo():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.path == "smollm2-135m-instruct"
    assert cfg.data.source == "arithmetic"
    assert (cfg.learner.zero_stage, cfg.learner.world_size, cfg.rollout.num_workers) == (2, 2, 1)
    assert cfg.algorithm.policy_loss == "trace" and cfg.algorithm.lam == 0.99
    assert cfg.samples_per_step == cfg.data.prompts_per_step * cfg.rollout.samples_per_prompt
    assert cfg.samples_per_step % cfg.learner.mini_batch_samples == 0
    assert cfg.grad_accum_steps >= 1
    assert cfg.data.data_dir == str(default_data_dir())
    assert cfg.run_dir == Path("runs") / "cpu_demo_grpo_lambda"


def test_paper_defaults_in_grpo_lambda():
    a = load_config(["algorithm=grpo_lambda", "~experiment"]).algorithm  # the group file, without a preset
    assert (a.lam, a.gamma, a.trace_style, a.policy_loss) == (0.99, 1.0, "both", "trace")
    assert (a.neg_adv_clamp, a.kl_estimator, a.kl_coef, a.clip_eps_low, a.clip_eps_high) == (
        -0.1,
        "k3",
        0.001,
        0.2,
        0.2,
    )
    g = load_config(["algorithm=grpo"]).algorithm
    assert (g.policy_loss, g.lam, g.trace_style, g.neg_adv_clamp) == ("ppo", 0.0, "recent", None)
    assert load_config(["algorithm=grpo_lambda_weight"]).algorithm.policy_loss == "weight"


def test_overrides_apply_and_group_choice_beats_experiment_preset():
    cfg = load_config(["algorithm.lam=0.5", "learner=zero3", "rollout.temperature=0.7", "trainer.run_name=x"])
    assert cfg.algorithm.lam == 0.5
    assert cfg.learner.zero_stage == 3
    assert cfg.learner.world_size == 2  # still the preset's value
    assert cfg.rollout.temperature == 0.7
    assert cfg.trainer.run_name == "x"
    # run_name follows the algorithm in the presets
    assert load_config(["algorithm=grpo"]).trainer.run_name == "cpu_demo_grpo"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_validates(group):
    opts = options(group)
    assert opts, f"conf/{group} has no options"
    for opt in opts:
        overrides = [f"{group}={opt}"]
        if opt in NEEDS_MODEL_PATH:
            overrides.append("model.path=/models/stand-in")
        cfg = load_config(overrides, check_files=False)
        if group == "learner":
            assert cfg.learner.zero_stage == int(opt[-1])
        if group == "experiment" and opt == "cpu_tiny_test":
            assert cfg.model.path == "tiny" and cfg.trainer.total_steps == 2


@pytest.mark.skipif(not HAVE_DATA, reason="shared/data not beside the checkout")
@pytest.mark.parametrize("data", ["math", "math_12k", "gsm8k"])
def test_data_files_exist_for_data_options(data):
    cfg = load_config([f"data={data}"])
    assert cfg.data.train_files and cfg.data.eval_files


def test_model_path_required_for_local_models():
    with pytest.raises(ConfigError, match=r"model\.path is required.*model\.path="):
        load_config(["experiment=paper_qwen1.5b_math12k"])


@pytest.mark.parametrize(
    "override, key, hint",
    [
        ("algorithm.lamda=0.5", "algorithm.lamda", "algorithm.lam"),
        ("lerner.lr=1e-5", "lerner", "learner"),
        ("data.arithmetic.max_operant=9", "data.arithmetic.max_operant", "data.arithmetic.max_operand"),
        ("+rollout.temprature=0.5", "rollout.temprature", "rollout.temperature"),
    ],
)
def test_misspelt_key_names_key_and_suggests(override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    msg = str(info.value)
    assert f"unknown key '{key}'" in msg
    assert f"did you mean '{hint}'" in msg


def test_misspelt_key_in_a_yaml_file_names_key_and_file(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    bad = conf / "algorithm" / "grpo_lambda.yaml"
    bad.write_text(bad.read_text() + "trace_stlye: both\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_dir=conf)
    msg = str(info.value)
    assert "algorithm.trace_stlye" in msg and "did you mean 'algorithm.trace_style'" in msg
    assert "algorithm/grpo_lambda" in msg


def test_unknown_group_option_lists_options():
    with pytest.raises(ConfigError, match=r"learner/zero4.*did you mean 'zero3'.*zero1, zero2, zero3"):
        load_config(["learner=zero4"])


@pytest.fixture(scope="module")
def base() -> Config:
    return load_config()


def with_value(cfg: Config, dotted: str, value) -> Config:
    cfg = copy.deepcopy(cfg)
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)
    return cfg


def test_bad_values_from_the_command_line_name_the_key():
    with pytest.raises(ConfigError, match=r"bad value for algorithm\.lam: Value 'abc'"):
        load_config(["algorithm.lam=abc"])
    with pytest.raises(ConfigError, match=r"algorithm\.lam=1\.5 must be in \[0, 1\]"):
        load_config(["algorithm.lam=1.5"])


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("algorithm.gamma", 1.5, "algorithm.gamma=1.5 must be in [0, 1]"),
        ("algorithm.trace_floor", -0.1, "algorithm.trace_floor=-0.1 must be in [0, 1]"),
        ("algorithm.max_log_ratio", 0.0, "algorithm.max_log_ratio=0.0 must be > 0"),
        (
            "algorithm.policy_loss",
            "reinforce",
            "algorithm.policy_loss='reinforce' is not one of: ppo, trace, weight",
        ),
        ("algorithm.kl_estimator", "k9", "is not one of: k1, k2, k3"),
        ("learner.offload", True, "learner.offload=true needs learner.zero_stage >= 1"),
        ("algorithm.lam", -0.1, "algorithm.lam=-0.1 must be in [0, 1]"),
        (
            "algorithm.trace_style",
            "bothh",
            "algorithm.trace_style='bothh' is not one of: recent, both, early (did you mean 'both'?)",
        ),
        ("algorithm.loss_agg", "token_mean", "did you mean 'token-mean'"),
        ("algorithm.neg_adv_clamp", 0.1, "algorithm.neg_adv_clamp=0.1 must be <= 0"),
        ("learner.zero_stage", 4, "learner.zero_stage=4 must be 0, 1, 2 or 3"),
        ("learner.lr", -1.0, "learner.lr=-1.0 must be > 0"),
        ("learner.warmup_steps", 10, "learner.warmup_steps=10 needs learner.lr_schedule=linear_warmup"),
        ("rollout.samples_per_prompt", 1, "rollout.samples_per_prompt=1 must be >= 2"),
        ("rollout.temperature", 0.0, "rollout.temperature=0.0 must be > 0"),
        ("model.dtype", "fp16", "model.dtype='fp16' is not one of"),
        ("reward.verifier", "maths", "did you mean 'math'"),
        ("logger.wandb.mode", "offlne", "did you mean 'offline'"),
        ("data.prompt_template", "qwen-math", "did you mean 'qwen_math'"),
        ("data.arithmetic.ops", ["+", "/"], "data.arithmetic.ops=['+', '/'] must be a non-empty list"),
        ("trainer.run_name", "a/b", "trainer.run_name='a/b' must be a plain folder name"),
        ("cluster.placement", "splitt", "did you mean 'split'"),
        ("cluster.num_nodes", 2, "cluster.num_nodes=2 needs cluster.address"),
        ("cluster.join_timeout_s", 0.0, "cluster.join_timeout_s=0.0 must be > 0"),
        ("cluster.role_resources", {"rolout": {"n": 1.0}}, "cluster.role_resources.rolout is not a role"),
        (
            "cluster.role_resources",
            {"rollout": {"GPU": 1.0}},
            "cluster.role_resources.rollout.GPU: give custom",
        ),
        ("cluster.role_resources", {"reward": {"n": 0.0}}, "cluster.role_resources.reward.n=0.0 must be > 0"),
    ],
)
def test_bad_value_names_key(base, key, value, fragment):
    if key == "learner.offload":
        base = with_value(base, "learner.zero_stage", 0)
    with pytest.raises(ConfigError) as info:
        validate(with_value(base, key, value))
    assert fragment in str(info.value)


def test_validate_accepts_the_base(base):
    assert validate(copy.deepcopy(base)) is not None


def test_divisibility_errors_name_both_keys(base):
    with pytest.raises(ConfigError) as info:
        load_config(["learner.micro_batch_samples=3"])
    msg = "learner.micro_batch_samples=3 × learner.world_size=2 = 6 must divide learner.mini_batch_samples=64"
    assert msg in str(info.value)
    with pytest.raises(ConfigError) as info:
        validate(with_value(base, "learner.mini_batch_samples", 48))
    assert "learner.mini_batch_samples=48 must divide" in str(info.value)
    assert "data.prompts_per_step × rollout.samples_per_prompt = 8 × 8 = 64" in str(info.value)
    # world size is part of the rule
    validate(with_value(base, "learner.world_size", 4))  # 64 = 8 × 4 × 2
    with pytest.raises(ConfigError, match=r"learner\.world_size=3"):
        validate(with_value(base, "learner.world_size", 3))
    # all problems are reported at once
    with pytest.raises(ConfigError) as info:
        validate(with_value(with_value(base, "algorithm.lam", 2.0), "learner.zero_stage", 7))
    assert "algorithm.lam" in str(info.value) and "learner.zero_stage" in str(info.value)


def test_missing_data_file_suggests_close_name(tmp_path):
    (tmp_path / "math_train.jsonl").write_text('{"id": "a", "problem": "p", "answer": "1"}\n')
    with pytest.raises(
        ConfigError, match=r"data\.train_files\[0\]='math_trian.jsonl' not found.*math_train.jsonl"
    ):
        load_config(
            ["data=math", f"data.data_dir={tmp_path}", "data.train_files=[math_trian.jsonl]", *NO_EVAL]
        )
    cfg = load_config(["data=math", f"data.data_dir={tmp_path}", *NO_EVAL])
    assert cfg.data.data_dir == str(tmp_path)


def test_data_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPO_LAMBDA_DATA_DIR", str(tmp_path))
    assert load_config().data.data_dir == str(tmp_path)


def test_to_config_from_plain_dict_checks_keys():
    cfg = to_config({"model": {"path": "tiny"}, "data": {"source": "arithmetic"}})
    assert cfg.model.path == "tiny" and cfg.learner.world_size == 2
    with pytest.raises(
        ConfigError, match=r"unknown key 'rollout.num_worker'.*did you mean 'rollout.num_workers'"
    ):
        to_config({"model": {"path": "tiny"}, "rollout": {"num_worker": 2}})


def test_eval_requested_without_eval_set_fails(base):
    with pytest.raises(ConfigError, match="trainer.eval_every_steps"):
        validate(with_value(base, "data.arithmetic.eval_rows", 0))


def test_model_folder_checked(base, tmp_path):
    with pytest.raises(ConfigError, match=r"model.path='/no/such/model' is not a folder"):
        validate(with_value(base, "model.path", "/no/such/model"))
    validate(with_value(base, "model.path", "/no/such/model"), check_files=False)
    validate(with_value(base, "model.path", str(tmp_path)))


def test_lora_with_zero3_rejected(base):
    cfg = with_value(with_value(base, "model.lora.rank", 8), "learner.zero_stage", 3)
    with pytest.raises(ConfigError, match=r"model.lora.rank=8 is not supported with learner.zero_stage=3"):
        validate(cfg)


def test_cli_precheck_exits_with_hint(capsys):
    with pytest.raises(SystemExit) as info:
        check_overrides_or_exit(["algorithm.lamda=0.5", "hydra.run.dir=/tmp/x"])
    assert info.value.code == 2
    assert "did you mean 'algorithm.lam'" in capsys.readouterr().err
    check_overrides_or_exit(["algorithm.lam=0.5", "hydra.run.dir=/tmp/x"])  # valid: returns
    check_overrides_or_exit(["--cfg", "job", "algorithm.lamda=0.5"])  # Hydra flags: left to Hydra


@pytest.mark.parametrize(
    ("backend", "gpus", "placement", "expected"),
    [
        ("auto", 0.0, "colocated", "gloo"),
        ("auto", 1.0, "split", "nccl"),
        ("auto", 1.0, "colocated", "gloo"),  # one GPU in two NCCL ranks is not allowed
        ("gloo", 1.0, "split", "gloo"),
    ],
)
def test_sync_backend_auto_resolves_by_device_and_placement(backend, gpus, placement, expected):
    from grpo_lambda.distributed.weight_sync import resolve_sync_backend

    cfg = load_config([f"rollout.sync_backend={backend}", f"cluster.placement={placement}"])
    assert resolve_sync_backend(cfg, gpus) == expected


@pytest.mark.parametrize(
    ("gpus", "placement", "match"),
    [(1.0, "colocated", "rollout.sync_backend=nccl.*sync_backend=gloo"), (0.0, "split", "needs GPUs")],
)
def test_impossible_nccl_sync_is_refused_naming_the_key(gpus, placement, match):
    from grpo_lambda.distributed.weight_sync import resolve_sync_backend

    cfg = load_config(["rollout.sync_backend=nccl", f"cluster.placement={placement}"])
    with pytest.raises(ValueError, match=match):
        resolve_sync_backend(cfg, gpus)


def test_bad_weight_sync_values_fail_naming_the_key():
    for override, key in (("rollout.weight_sync=nccl", "rollout.weight_sync"), ("rollout.weight_sync=auto", "rollout.weight_sync"),
                          ("rollout.sync_bucket_mb=0", "rollout.sync_bucket_mb"),
                          ("rollout.sync_backend=mpi", "rollout.sync_backend")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            load_config([override])
    with pytest.raises(ConfigError, match="rollout.sync_backend='nccl' needs GPUs"):
        load_config(["rollout.sync_backend=nccl", "cluster.num_gpus=0"])


# ------------------------------------------------- what the messages are built from (fails loudly on an upgrade)
def test_hydra_and_omegaconf_structures_the_messages_rely_on():
    """config/loading.py reads Hydra's parsed overrides, MissingConfigException's fields and OmegaConf's full_key,
    never their English wording; if an upgrade drops one of these, this test names it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    parsed = OverridesParser.create().parse_overrides(["+a.b=1", "~experiment", "learner=zero2", "x=[1,2]"])
    assert [o.key_or_group for o in parsed] == ["a.b", "experiment", "learner", "x"]
    assert parsed[1].is_delete() and parsed[2].value() == "zero2"
    (sweep,) = OverridesParser.create().parse_overrides(["algorithm=grpo,grpo_lambda"])
    assert sweep.is_sweep_override() and list(sweep.sweep_string_iterator()) == ["grpo", "grpo_lambda"]
    exc = MissingConfigException("text", missing_cfg_file="learner/zero9", options=["zero1"])
    assert exc.missing_cfg_file == "learner/zero9" and exc.options == ["zero1"]
    with pytest.raises(ConfigKeyError) as info:
        OmegaConf.merge(OmegaConf.structured(Config), {"algorithm": {"lamda": 1}})
    assert info.value.full_key == "algorithm.lamda"


def test_missing_option_in_a_preset_lists_the_options(tmp_path):
    """A preset's defaults naming a missing option: Hydra's MissingConfigException, read through its fields."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "experiment" / "bad.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /learner: zero9\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"no config 'learner/zero9' \(did you mean 'zero3'\?\); options for 'learner': zero1, zero2",
    ):
        load_config(["experiment=bad"], config_dir=conf)


def test_unparsable_override_says_so():
    with pytest.raises(ConfigError, match=r"cannot parse the overrides \['algorithm.lam=\[1'\]"):
        load_config(["algorithm.lam=[1"])


def test_new_dict_entries_need_a_plus():
    with pytest.raises(ConfigError, match=r"add a new entry with '\+': \+cluster.env_vars.FOO=<value>"):
        load_config(["cluster.env_vars.FOO=1"])
    assert load_config(["+cluster.env_vars.FOO=1"]).cluster.env_vars == {"FOO": "1"}
    pinned = load_config(["+cluster.role_resources.rollout.rollout_node=0.01", "cluster.placement=split"])
    assert pinned.cluster.role_resources == {"rollout": {"rollout_node": 0.01}}
    assert (
        load_config(["+reward.verifier_by_dataset.aime24=math"]).reward.verifier_by_dataset["aime24"]
        == "math"
    )


def test_cli_precheck_with_multirun_checks_keys(capsys):
    with pytest.raises(SystemExit) as info:
        check_overrides_or_exit(["-m", "algorithm.lamda=0.5,0.9", "trainer.seed=0,1"])
    assert info.value.code == 2 and "did you mean 'algorithm.lam'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_overrides_or_exit(["--multirun", "algorithm=grpo,grpo_lambdaa"])
    check_overrides_or_exit(["-m", "algorithm=grpo,grpo_lambda", "trainer.seed=0,1"])  # sweeps are fine


def test_one_learner_config_and_the_loss_reads_the_algorithm_section():
    """The schema is the only config: the algorithm section is a LossConfig (the loss takes it as it is)."""
    import grpo_lambda.config as config_pkg
    from grpo_lambda.algorithms import LossConfig

    cfg = load_config()
    assert isinstance(cfg.algorithm, LossConfig)
    assert config_pkg.LearnerConfig is type(cfg.learner)
    assert not hasattr(__import__("grpo_lambda.learner", fromlist=["x"]), "LearnerConfig")


# ------------------------------------------------- the paper presets (the authors' launch scripts)
PAPER_BENCHMARKS = {
    "aime24.jsonl",
    "math500.jsonl",
    "olympiadbench.jsonl",
    "minerva_math.jsonl",
    "amc23.jsonl",
}


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
@pytest.mark.parametrize("algorithm", ["grpo_lambda", "grpo"])
def test_paper_presets_match_the_authors_runs(preset, algorithm):
    """Every paper preset, and its GRPO twin: the values of the authors' scripts (docs/algorithm.md)."""
    model, train_file, response_tokens, prompts = PAPER_PRESETS[preset]
    cfg = load_config(
        [f"experiment={preset}", f"algorithm={algorithm}", "model.path=/models/stand-in"], check_files=False
    )
    assert (cfg.model.name, cfg.data.train_files, cfg.model.max_response_tokens) == (
        model,
        [train_file],
        response_tokens,
    )
    assert cfg.data.prompts_per_step == prompts and cfg.rollout.samples_per_prompt == 8
    assert (
        cfg.learner.mini_batch_samples == cfg.samples_per_step and cfg.learner.epochs_per_batch == 1
    )  # one update
    assert (cfg.model.lora.rank, cfg.model.lora.alpha) == (64, 32.0)
    assert set(cfg.model.lora.target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert (cfg.learner.lr, cfg.learner.lr_schedule, cfg.learner.grad_clip) == (3e-6, "constant", 1.0)
    assert cfg.rollout.temperature == 1.0 and cfg.model.max_prompt_tokens == 512
    assert cfg.data.prompt_template == "qwen_math"
    assert PAPER_BENCHMARKS <= set(cfg.data.eval_files)
    assert (cfg.eval.samples_per_prompt, cfg.eval.temperature) == (1, 0.0)  # greedy validation
    assert cfg.reward.math_fallback == "none"  # only a \\boxed{} answer counts, as the authors grade
    a = cfg.algorithm
    assert (a.kl_estimator, a.kl_coef, a.clip_eps_low, a.clip_eps_high, a.gamma) == (
        "k3",
        0.001,
        0.2,
        0.2,
        1.0,
    )
    assert cfg.trainer.run_name == f"{preset}_{algorithm}"
    if algorithm == "grpo":
        assert (a.policy_loss, a.lam) == ("ppo", 0.0)
        return
    assert (a.policy_loss, a.lam) == ("trace", 0.99)
    if preset == "paper_authors_code":  # the script as written: tests/unit/test_presets.py
        assert (a.trace_anchor, a.trace_floor, a.trace_style, a.neg_adv_clamp) == (
            "horizon",
            1e-7,
            "recent",
            -1000.0,
        )
    else:  # the paper's text
        assert (a.trace_anchor, a.trace_floor, a.trace_style, a.neg_adv_clamp) == ("token", 0.0, "both", -0.1)


def test_the_old_paper_preset_is_gone():
    with pytest.raises(ConfigError, match="no config 'experiment/paper_qwen1.5b'"):
        load_config(["experiment=paper_qwen1.5b"])


def test_token_budget_replaces_the_micro_batch_count_rule(base):
    cfg = load_config(
        ["learner.micro_batch_tokens=1024", "learner.micro_batch_samples=3"]
    )  # 3 ∤ 32: unused now
    assert cfg.learner.micro_batch_tokens == 1024
    with pytest.raises(ConfigError, match="learner.micro_batch_tokens=0 must be >= 1 or null"):
        load_config(["learner.micro_batch_tokens=0"])
    with pytest.raises(
        ConfigError, match=r"learner.world_size=3 must divide learner.mini_batch_samples=64 \(rows"
    ):
        validate(with_value(with_value(base, "learner.micro_batch_tokens", 512), "learner.world_size", 3))


@pytest.mark.parametrize(
    "overrides, gpus, k",
    [([], 0, 1), ([], 8, 0), (["cluster.placement=split"], 8, 1), (["rollout.max_staleness=0"], 0, 0),
     (["rollout.max_staleness=2"], 8, 2)],
)  # fmt: skip
def test_max_staleness_defaults_by_where_the_run_lands(overrides, gpus, k):
    """null = 0 on colocated GPUs (engines sleep while the learner trains), 1 on split GPUs and CPUs."""
    cfg = load_config(["experiment=cpu_tiny_test", "rollout.max_staleness=null", *overrides])
    assert cfg.max_staleness_for(gpus) == k


def test_negative_max_staleness_is_rejected_by_name():
    with pytest.raises(ConfigError, match="rollout.max_staleness"):
        load_config(["experiment=cpu_tiny_test", "rollout.max_staleness=-1"])
