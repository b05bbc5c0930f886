"""Group packing (learner/packing.py): packed rows give every response token the logits and gradients of its own
padded row, and the packed planner keeps a prompt's rows together under the budget."""

from __future__ import annotations

import pytest
import torch

from grpo_lambda.learner import build_batch
from grpo_lambda.learner.model import load_causal_lm, response_logp
from grpo_lambda.learner.packing import pack, packed_positions, prompt_groups
from grpo_lambda.learner.token_budget import plan_rank_packed, row_lengths
from grpo_lambda.models.tiny import build_tiny_model


def grouped_batch(seed=0, sizes=(3, 1, 2, 4)):
    """Prompt groups of the given sizes (a singleton among them) with uneven prompts and responses."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, 200, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    prompts, responses = [], []
    for size in sizes:
        prompt = ids(2, 9)
        for _ in range(size):
            prompts.append(prompt)
            responses.append(ids(1, 14))
    return build_batch(prompts, responses, torch.randn(len(prompts), generator=g))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_logp_and_gradients_equal_the_padded_rows(tiny, attn):
    model = load_causal_lm(tiny, dtype="float32", attn_implementation=attn)
    batch = grouped_batch()
    grads = []
    for packed in (False, True):
        model.zero_grad()
        logp, ent = response_logp(model, batch, packed=packed, entropy="grad", temperature=0.7)
        (logp.sum() + 0.1 * ent.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if not packed:
            padded_logp = logp.detach()
        else:
            torch.testing.assert_close(logp.detach(), padded_logp, rtol=1e-5, atol=1e-5)
            assert torch.all(logp[~batch.response_mask] == 0)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_pack_layout_shares_the_prompt_and_restarts_positions():
    batch = grouped_batch(sizes=(2,))
    packed = pack(batch, pad_token_id=0, dtype=torch.float32)
    P = batch.prompt_len
    prompt = batch.input_ids[0, :P][batch.attention_mask[0, :P].bool()]
    n_p = len(prompt)
    r0, r1 = (int(n) for n in batch.response_mask.sum(-1))
    assert packed.input_ids.shape == (1, n_p + r0 + r1)
    assert packed.position_ids[0].tolist() == [*range(n_p), *range(n_p, n_p + r0), *range(n_p, n_p + r1)]
    allowed = packed.attention_mask[0, 0] == 0
    first_of_r1 = n_p + r0
    assert allowed[first_of_r1, :n_p].all()  # the second response sees the prompt ...
    assert not allowed[first_of_r1, n_p:first_of_r1].any()  # ... and nothing of the first response
    assert packed.index[1, 0] == n_p - 1 and packed.index[1, 1] == first_of_r1


def test_packed_plan_keeps_groups_together_under_the_budget():
    batch = grouped_batch(seed=1, sizes=(4, 4, 2, 1, 4, 3))
    prompt_lens, response_lens = row_lengths(batch)
    groups = prompt_groups(batch)
    for budget in (40, 80, 200, 10_000):
        plan = plan_rank_packed(prompt_lens, response_lens, groups, budget)
        assert sorted(i for mb in plan for i in mb) == list(range(len(batch)))
        for mb in plan:
            units = [g for g in groups if g[0] in mb]
            assert all(set(g) <= set(mb) for g in units)  # never split
            computed, _ = packed_positions(batch.select(mb))
            assert computed <= budget or len(units) == 1  # a unit longer than the budget goes alone


def test_packed_positions_count_each_prompt_once():
    batch = grouped_batch(sizes=(3,))
    n_p = int(batch.attention_mask[0, : batch.prompt_len].sum())
    responses = int(batch.response_mask.sum())
    assert packed_positions(batch) == (n_p + responses, n_p + responses)
