"""Settings resolved where the run lands (config/resolve.py): rollout.max_staleness and algorithm.behaviour_is."""

from __future__ import annotations

import pytest

from grpo_lambda.config import load_config
from grpo_lambda.config.resolve import resolve_behaviour_is, resolve_runtime


def paper(*overrides):
    return load_config(["experiment=paper_qwen1.5b_math12k", "model.path=/models/stand-in", *overrides],
                       check_files=False)  # fmt: skip


def test_a_split_paper_preset_resolves_to_tis_and_says_so():
    cfg = paper("cluster.placement=split")
    assert (cfg.rollout.max_staleness, cfg.algorithm.behaviour_is) == (None, "auto")  # as composed
    lines = resolve_runtime(cfg, gpus=1.0)
    assert (cfg.rollout.max_staleness, cfg.algorithm.behaviour_is, cfg.algorithm.behaviour_is_cap) == (
        1,
        "tis",
        2.0,
    )
    assert any("rollout.max_staleness=null -> 1 on split GPUs" in line for line in lines)
    assert any(line.startswith("algorithm.behaviour_is=auto -> tis") and "C=2" in line for line in lines)


@pytest.mark.parametrize(
    "overrides, gpus, k, mode",
    [([], 1.0, 0, "none"),  # colocated GPUs: on-policy, no correction (λ = 0 stays GRPO bit for bit)
     ([], 0.0, 1, "tis"),  # CPUs: one batch ahead
     (["rollout.max_staleness=0"], 0.0, 0, "none"),
     (["rollout.max_staleness=2", "cluster.placement=split"], 1.0, 2, "tis"),
     (["algorithm.behaviour_is=mis"], 0.0, 1, "mis"),  # an explicit choice is kept
     (["algorithm=grpo"], 0.0, 1, "tis")],  # the GRPO twin alike
)  # fmt: skip
def test_auto_follows_the_resolved_staleness(overrides, gpus, k, mode):
    cfg = paper(*overrides)
    resolve_runtime(cfg, gpus)
    assert (cfg.rollout.max_staleness, cfg.algorithm.behaviour_is) == (k, mode)
    assert resolve_behaviour_is("auto", k) == mode or "behaviour_is=mis" in overrides[0]


def test_explicit_none_with_stale_samples_is_warned_about():
    cfg = paper("cluster.placement=split", "algorithm.behaviour_is=none")
    lines = resolve_runtime(cfg, gpus=1.0)
    assert cfg.algorithm.behaviour_is == "none"
    assert any(
        line.startswith("WARNING: algorithm.behaviour_is=none with rollout.max_staleness=1") for line in lines
    )
    on_policy = resolve_runtime(paper("algorithm.behaviour_is=none"), gpus=1.0)
    assert not any("WARNING" in line for line in on_policy)


def test_the_default_everywhere_is_auto():
    assert load_config().algorithm.behaviour_is == "auto"
    for algorithm in (
        "grpo",
        "grpo_lambda",
        "grpo_lambda_weight",
        "grpo_lambda_recent",
        "grpo_lambda_horizon",
    ):
        assert load_config([f"algorithm={algorithm}"]).algorithm.behaviour_is == "auto", algorithm


def test_a_learner_refuses_an_unresolved_auto():
    from grpo_lambda.learner.worker import LearnerWorker

    with pytest.raises(ValueError, match="behaviour_is='auto' is resolved where the run lands"):
        LearnerWorker().init("/nonexistent", load_config())
