"""Length-aware micro-batch plans (learner.micro_batch_tokens): budget, coverage, equal counts, less padding."""

from __future__ import annotations

import pytest
import torch

from grpo_lambda.learner.batch import build_batch, split_batch
from grpo_lambda.learner.token_budget import (
    equalize,
    micro_batch_cost,
    plan_micro_batches,
    plan_rank,
    row_lengths,
)


def padding_fraction(micro_batches) -> float:
    """Share of the positions that compacted micro-batches compute that are padding (learner/padding_frac)."""
    compact = [mb.compact() for mb in micro_batches]
    total = sum(mb.input_ids.numel() for mb in compact)
    return 1.0 - sum(int(mb.attention_mask.sum()) for mb in compact) / total


def batch_of(prompt_lens, response_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in prompt_lens]
    responses = [torch.randint(3, 100, (n,), generator=g).tolist() for n in response_lens]
    return build_batch(prompts, responses, torch.zeros(len(prompts)))


def test_row_lengths_and_cost():
    b = batch_of([3, 5, 2], [7, 1, 4])
    assert row_lengths(b) == ([3, 5, 2], [7, 1, 4])
    assert micro_batch_cost([0, 2], [3, 5, 2], [7, 1, 4]) == 2 * (3 + 7)
    assert micro_batch_cost([1], [3, 5, 2], [0, 0, 0]) == 5 + 1  # an empty response still needs a column


def test_plan_respects_the_budget_and_covers_every_row_once():
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(5, 20, (40,), generator=gen).tolist()
    responses = torch.randint(1, 120, (40,), generator=gen).tolist()
    plan = plan_rank(prompts, responses, budget=400)
    assert sorted(i for mb in plan for i in mb) == list(range(40))
    for mb in plan:
        assert micro_batch_cost(mb, prompts, responses) <= 400 or len(mb) == 1
    assert plan_rank([10], [500], budget=64) == [[0]]  # longer than the budget: alone


def test_equal_counts_across_ranks():
    plans = equalize([[[0, 1, 2, 3]], [[0], [1], [2, 3]]])
    assert [len(p) for p in plans] == [3, 3]
    assert sorted(i for mb in plans[0] for i in mb) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot split 1 rows into 2"):
        equalize([[[0]], [[0], [1]]])


def test_shards_get_plans_of_equal_length_and_less_padding_than_fixed_micro_batches():
    gen = torch.Generator().manual_seed(2)
    lens = torch.randint(1, 64, (32,), generator=gen).tolist()
    lens[0] = 128  # one long response, as in real rollouts
    b = batch_of([12] * 32, lens)
    shards = split_batch(b, 16, what="rows per rank")
    plans = plan_micro_batches(shards, budget=16 * 40)
    assert len(plans[0]) == len(plans[1])
    by_tokens = [shard.select(rows) for shard, plan in zip(shards, plans) for rows in plan]
    by_count = [mb for shard in shards for mb in split_batch(shard, 4)]
    assert padding_fraction(by_tokens) < padding_fraction(by_count)
    with pytest.raises(ValueError, match="micro_batch_tokens=0"):
        plan_micro_batches(shards, 0)
