"""Learner batches: padding layout, position ids, masks, and the mini/micro/data-parallel splits."""

from __future__ import annotations

import pytest
import torch

from grpo_lambda.learner.batch import (
    LearnerBatch,
    build_batch,
    concat_batches,
    mini_batch_counts,
    pad_response_dim,
    pad_rows,
    shard_for_data_parallel,
    split_batch,
)

PAD = 0


def small_batch(**kw) -> LearnerBatch:
    prompts = [[11, 12, 13], [21], [31, 32]]
    responses = [[14, 15], [22, 23, 24, 25], []]
    return build_batch(prompts, responses, [1.0, -1.0, 0.5], pad_token_id=PAD, **kw)


def test_layout_left_padded_prompt_right_padded_response():
    b = small_batch()
    assert b.prompt_len == 3 and b.response_len == 4
    assert b.input_ids.tolist() == [
        [11, 12, 13, 14, 15, PAD, PAD],
        [PAD, PAD, 21, 22, 23, 24, 25],
        [PAD, 31, 32, PAD, PAD, PAD, PAD],
    ]
    assert b.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 1],
        [0, 1, 1, 0, 0, 0, 0],
    ]
    # Every real token gets the position it has in the unpadded sequence (prompt starts at 0).
    assert b.position_ids[0, :5].tolist() == [0, 1, 2, 3, 4]
    assert b.position_ids[1, 2:].tolist() == [0, 1, 2, 3, 4]
    assert b.position_ids[2, 1:3].tolist() == [0, 1]
    assert b.response_mask.dtype == torch.bool
    assert b.response_mask.tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [False, False, False, False],
    ]
    assert b.response_ids.tolist()[1] == [22, 23, 24, 25]
    assert b.num_tokens == 6
    assert b.advantages.dtype == torch.float32 and b.advantages.tolist() == [1.0, -1.0, 0.5]


def test_old_and_ref_logp_from_lists_and_tensors():
    b = small_batch(old_logp=[[-1.0, -2.0], [-3.0, -4.0, -5.0, -6.0], []])
    assert b.old_logp.tolist() == [[-1, -2, 0, 0], [-3, -4, -5, -6], [0, 0, 0, 0]]
    ref = -torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b = small_batch(ref_logp=ref)
    assert torch.equal(b.ref_logp[1], ref[1]) and b.ref_logp[0, 2:].tolist() == [0, 0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"old_logp": [[-1.0], [-3.0, -4.0, -5.0, -6.0], []]}, r"old_logp\[0\] has 1 values"),
        ({"ref_logp": [[-1.0, -2.0]]}, "ref_logp has 1 rows"),
        ({"old_logp": torch.zeros(3, 2)}, "does not cover"),
    ],
)
def test_logp_shape_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_batch(**kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="prompts .* empty"):
        build_batch([[1], []], [[2], [3]], [0.0, 0.0])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        build_batch([[1], [2]], [[3]], [0.0, 0.0])
    with pytest.raises(ValueError, match="2 samples but 3 advantages"):
        build_batch([[1], [2]], [[3], [4]], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="every response is empty"):
        build_batch([[1], [2]], [[], []], [0.0, 0.0])


def test_select_compact_and_pad_back():
    b = small_batch(old_logp=[[-1.0, -2.0], [-3.0, -4.0, -5.0, -6.0], []])
    sub = b.select([0, 2])
    assert len(sub) == 2 and sub.response_len == 4
    c = sub.compact()
    # Row 0's prompt is the longest (3), so no prompt column goes; responses end after column 2.
    assert c.prompt_len == 3 and c.response_len == 2
    assert c.input_ids.tolist() == [[11, 12, 13, 14, 15], [PAD, 31, 32, PAD, PAD]]
    assert c.old_logp.tolist() == [[-1.0, -2.0], [0.0, 0.0]]
    assert pad_response_dim(c.old_logp, 4).tolist() == [[-1, -2, 0, 0], [0, 0, 0, 0]]
    # A short-prompt row alone drops its leading pad columns but keeps its last prompt token.
    c1 = b.select([1]).compact()
    assert c1.input_ids.tolist() == [[21, 22, 23, 24, 25]] and c1.prompt_len == 1
    assert c1.position_ids.tolist() == [[0, 1, 2, 3, 4]]
    # A row without response tokens keeps one (masked) response column.
    c2 = b.select([2]).compact()
    assert c2.response_len == 1 and not c2.response_mask.any() and c2.prompt_len == 2


def batch_of(n: int, seed: int = 0) -> LearnerBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = [list(range(1, 2 + int(torch.randint(0, 4, (1,), generator=g)))) for _ in range(n)]
    responses = [[100 + i] * int(torch.randint(1, 6, (1,), generator=g)) for i in range(n)]
    return build_batch(prompts, responses, torch.arange(n, dtype=torch.float32))


def test_split_and_concat_roundtrip():
    b = batch_of(8)
    parts = split_batch(b, 2)
    assert [p.advantages.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    back = concat_batches(parts)
    assert torch.equal(back.input_ids, b.input_ids) and torch.equal(back.response_mask, b.response_mask)
    with pytest.raises(ValueError, match="micro_batch_samples=3 must be >= 1 and divide the 8 samples"):
        split_batch(b, 3)
    with pytest.raises(ValueError, match="different"):
        concat_batches([b, build_batch([[1]], [[2]], [0.0])])


def test_counts_and_data_parallel_shards():
    b = batch_of(8)
    counts = mini_batch_counts(b, 4)
    assert [c.num_seqs for c in counts] == [4, 4]
    assert [c.num_tokens for c in counts] == [int(b.response_mask[:4].sum()), int(b.response_mask[4:].sum())]
    shards = shard_for_data_parallel(b, world_size=2, mini_batch_samples=4)
    # Rank r gets the r-th half of each mini-batch, in mini-batch order.
    assert [s.advantages.tolist() for s in shards] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # Splitting the shards the way the ranks do gives back every sample exactly once per mini-batch.
    seen = sorted(x for s in shards for mb in split_batch(s, 2) for x in mb.advantages.tolist())
    assert seen == list(range(8))
    with pytest.raises(ValueError, match="multiple of 3"):
        shard_for_data_parallel(b, world_size=3, mini_batch_samples=4)


def test_pad_rows_for_even_inference_shards():
    b = batch_of(5)
    padded, extra = pad_rows(b, 2)
    assert extra == 1 and len(padded) == 6 and torch.equal(padded.input_ids[5], b.input_ids[0])
    same, none = pad_rows(b, 5)
    assert none == 0 and same is b


def test_batch_validation():
    b = small_batch()
    with pytest.raises(TypeError, match="response_mask must be bool"):
        b.replace(response_mask=b.response_mask.long())
    with pytest.raises(ValueError, match="advantages must be"):
        b.replace(advantages=torch.zeros(2))
    with pytest.raises(ValueError, match="old_logp must be"):
        b.replace(old_logp=torch.zeros(3, 3))
