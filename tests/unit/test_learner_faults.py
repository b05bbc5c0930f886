"""The pure parts of non-finite step skipping (docs/faults.md): the ZeRO-0 fp32 optimiser's skip, metrics of
skipped updates, `trainer.max_consecutive_skips` and the trainer's decision to push or keep the engines' weights.
The learner ranks themselves: tests/integration/test_faults.py."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from grpo_lambda.config import ConfigError, LearnerConfig, load_config, validate
from grpo_lambda.learner.deepspeed_setup import make_optimizer
from grpo_lambda.learner.metrics import TokenWeighted, reduce_rank_metrics


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_flagged_optimiser_step_changes_nothing(name):
    """ZeRO-0 fp32 steps our torch optimiser directly: with `overflow` set, DeepSpeed's step must leave the
    parameters and every state tensor bitwise as they were (AdamW would otherwise still decay the weights)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(model, LearnerConfig(optimizer=name, lr=0.1, weight_decay=0.1))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()  # a real step first: the moments exist
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    model(torch.randn(2, 4)).sum().backward()
    opt.overflow = True  # deepspeed_setup.skip_unchecked_step
    opt.step()
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())
    state, state_before = opt.state_dict(), before[1]
    assert (
        state["param_groups"] == state_before["param_groups"]
        and state["state"].keys() == state_before["state"].keys()
    )
    for i, entry in state["state"].items():
        assert entry.keys() == state_before["state"][i].keys()
        assert all(
            torch.equal(torch.as_tensor(v), torch.as_tensor(state_before["state"][i][k]))
            for k, v in entry.items()
        )
    del opt.overflow  # deepspeed_setup.end_unchecked_skip: the class default (False) applies again
    opt.step()
    assert not torch.equal(model.weight, before[0]["weight"])


def test_token_weighted_merge_equals_adding_the_micro_batches_directly():
    direct, update = TokenWeighted(), TokenWeighted()
    for acc in (direct, update):
        acc.add({"learner/kl": 0.1, "trace/ratio_max": 1.5}, 30.0)
    merged = TokenWeighted()
    merged.add({"learner/kl": 0.5, "trace/ratio_max": 1.2}, 10.0)
    direct.add({"learner/kl": 0.5, "trace/ratio_max": 1.2}, 10.0)
    merged.merge(update)
    assert merged.means() == pytest.approx(direct.means()) and merged.tokens == direct.tokens == 40.0


def test_rank_metrics_of_a_skipped_step():
    """Skip counts are global (every rank skipped the same updates); with no update applied the loss and grad
    norm are NaN on every rank and stay NaN combined, not a silent 0."""
    nan = float("nan")
    rank = {"learner/loss": nan, "learner/num_tokens": 0.0, "learner/grad_norm": nan, "learner/pg_loss": nan,
            "learner/num_updates": 2.0, "learner/skipped_steps": 2.0, "learner/skipped_steps_total": 5.0}  # fmt: skip
    out = reduce_rank_metrics([rank, dict(rank)])
    assert out["learner/skipped_steps"] == 2.0 and out["learner/skipped_steps_total"] == 5.0
    assert out["learner/num_updates"] == 2.0 and out["learner/num_tokens"] == 0.0
    assert all(math.isnan(out[k]) for k in ("learner/loss", "learner/grad_norm", "learner/pg_loss"))


def test_max_consecutive_skips_is_validated():
    cfg = load_config(["experiment=cpu_tiny_test"])
    assert cfg.trainer.max_consecutive_skips == 3
    cfg.trainer.max_consecutive_skips = -1
    with pytest.raises(ConfigError, match=r"trainer\.max_consecutive_skips=-1 must be >= 0"):
        validate(cfg, check_files=False)


def trainer_stub(limit: int):
    """Just what Trainer._require_finite reads: the config, the step number and the count of skipped steps."""
    from grpo_lambda.trainer import Trainer

    stub = Trainer.__new__(Trainer)
    stub.cfg = SimpleNamespace(trainer=SimpleNamespace(max_consecutive_skips=limit))
    stub.step_num, stub.consecutive_skips = 0, 0
    return stub


def step_metrics(skipped: int, updates: int = 2, loss: float | None = None) -> dict[str, float]:
    loss = (float("nan") if skipped == updates else 0.5) if loss is None else loss
    return {
        "learner/loss": loss,
        "learner/num_updates": float(updates),
        "learner/skipped_steps": float(skipped),
    }


def test_fully_skipped_steps_keep_the_weights_and_stop_the_run_past_the_limit():
    trainer = trainer_stub(limit=2)
    assert trainer._require_finite(step_metrics(0)) is True  # weights changed: push them
    assert trainer._require_finite(step_metrics(1)) is True  # one of two updates applied: still a change
    for n in (1, 2):  # tolerated: nothing to push, the engines keep their version
        assert trainer._require_finite(step_metrics(2)) is False and trainer.consecutive_skips == n
        trainer.step_num += 1
    assert trainer._require_finite(step_metrics(0)) is True and trainer.consecutive_skips == 0  # reset
    trainer._require_finite(step_metrics(2))
    trainer._require_finite(step_metrics(2))
    trainer.step_num = 9
    with pytest.raises(FloatingPointError) as info:
        trainer._require_finite(step_metrics(2))
    message = str(info.value)
    assert message.startswith("step 10: learner loss is nan, non-finite loss or gradient in 3 steps in a row")
    assert "trainer.max_consecutive_skips=2" in message
    assert "the last checkpoint is intact: lower learner.lr or check the data" in message


def test_zero_tolerance_stops_at_the_first_skipped_step_and_a_non_finite_applied_loss_always_stops():
    with pytest.raises(FloatingPointError, match="step 1: learner loss is nan, .* 1 step in a row"):
        trainer_stub(limit=0)._require_finite(step_metrics(2))
    # an applied update with a non-finite loss cannot happen (the learner skips it); if it did, stop as before
    with pytest.raises(
        FloatingPointError, match="step 1: learner loss is inf; stopping before the bad weights"
    ):
        trainer_stub(limit=3)._require_finite(step_metrics(0, loss=float("inf")))
