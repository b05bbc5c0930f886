"""The learner's set-up from the run config's `learner` section: the DeepSpeed config builder, optimiser / LR
schedule, the shared-memory op switch, metric reduction. (Value checks live in test_config.py.)"""

from __future__ import annotations

import pytest
import torch

from grpo_lambda.config import LearnerConfig
from grpo_lambda.learner.deepspeed_setup import (
    backward_scale,
    build_ds_config,
    build_inference_ds_config,
    make_lr_scheduler,
    make_optimizer,
)
from grpo_lambda.learner.metrics import TokenWeighted, reduce_rank_metrics


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_ds_config_batch_sizes_and_precision(stage, dtype):
    cfg = LearnerConfig(zero_stage=stage, mini_batch_samples=16, micro_batch_samples=2, grad_clip=0.5)
    ds = build_ds_config(cfg, dtype, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4  # 16 = 2 micro x 4 steps x 2 ranks
    assert ds["train_batch_size"] == (
        ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    )
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] is (dtype == "bfloat16") and ds["fp16"]["enabled"] is False
    assert ds["gradient_clipping"] == 0.5
    # fp32 gradient accumulation under bf16 wherever DeepSpeed allows it (not ZeRO-0).
    assert ("data_types" in ds) is (dtype == "bfloat16" and stage > 0)
    assert "optimizer" not in ds and "scheduler" not in ds  # client optimiser: no FusedAdam JIT build


def test_ds_config_offload_and_inference():
    ds = build_ds_config(LearnerConfig(zero_stage=3, offload=True), "float32", world_size=2)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    inf = build_inference_ds_config(
        LearnerConfig(micro_batch_samples=2, logp_micro_batch_samples=8), "bfloat16", 2
    )
    assert inf["zero_optimization"]["stage"] == 3 and inf["train_micro_batch_size_per_gpu"] == 8
    assert inf["bf16"]["enabled"] is True


def test_backward_scale_turns_the_rank_average_into_a_sum():
    assert backward_scale(1) == 1.0 and backward_scale(4) == 4.0


def test_optimizer_groups_and_warmup():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = LearnerConfig(lr=0.1, weight_decay=0.01, lr_schedule="linear_warmup", warmup_steps=4)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and [p.dim() for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    sched = make_lr_scheduler(opt, cfg)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    # The schedule survives a state_dict round trip (what a checkpoint stores).
    sched2 = make_lr_scheduler(make_optimizer(model, cfg), cfg)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 6
    sgd = make_optimizer(model, LearnerConfig(optimizer="sgd", lr=0.5))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.5
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(frozen, cfg)


def test_reduce_rank_metrics():
    r0 = {
        "learner/loss": 0.25,
        "learner/num_tokens": 30.0,
        "learner/kl": 0.1,
        "learner/grad_norm": 2.0,
        "learner/lr": 1e-6,
        "learner/update_s": 1.0,
        "trace/ratio_max": 1.5,
    }
    r1 = {
        "learner/loss": 0.5,
        "learner/num_tokens": 10.0,
        "learner/kl": 0.5,
        "learner/grad_norm": 2.0,
        "learner/lr": 1e-6,
        "learner/update_s": 3.0,
        "trace/ratio_max": 1.2,
    }
    out = reduce_rank_metrics([r0, r1])
    assert out["learner/loss"] == 0.75  # shares add up to the mini-batch loss
    assert out["learner/num_tokens"] == 40.0
    assert out["learner/kl"] == pytest.approx((0.1 * 30 + 0.5 * 10) / 40)  # token-weighted
    assert out["learner/grad_norm"] == 2.0 and out["learner/lr"] == 1e-6
    assert out["learner/update_s"] == 3.0 and out["trace/ratio_max"] == 1.5  # a maximum stays a maximum
    assert reduce_rank_metrics([]) == {}


def test_token_weighted_means_and_maxima():
    acc = TokenWeighted()
    acc.add({"learner/kl": 0.1, "rollout/logp_abs_diff_max": 0.5}, 30.0)
    acc.add({"learner/kl": 0.5, "rollout/logp_abs_diff_max": 0.2}, 10.0)
    means = acc.means()
    assert means["learner/kl"] == pytest.approx((0.1 * 30 + 0.5 * 10) / 40)
    assert means["rollout/logp_abs_diff_max"] == 0.5 and acc.tokens == 40.0
    assert TokenWeighted().means() == {}
