"""Length-aware micro-batches: a token budget per forward/backward (`learner.micro_batch_tokens`) instead of a count.

A micro-batch is compacted before its forward (`LearnerBatch.compact` drops leading prompt pads and trailing response
pads), so it costs rows × (its longest prompt + its longest response) positions. Rows sorted by length and grouped
greedily under the budget waste little on padding: short responses share a micro-batch with other short ones instead
of being padded to the batch's longest.

Every rank must run the same number of forwards per mini-batch (ZeRO-3 gathers parameters collectively, and DeepSpeed
reduces gradients at one shared accumulation boundary), so the driver plans all ranks together and a rank with fewer
micro-batches splits its largest ones until the counts agree.

Exactness: each micro-batch's loss is its exact share of the mini-batch loss (global normalisers, see batch.py), so
how the rows are grouped changes only the order of a sum; tests/integration/test_learner.py checks the update against
a single-process full-batch step.
"""

from __future__ import annotations

from collections.abc import Sequence

from .batch import LearnerBatch
from .packing import prompt_groups

Plan = list[list[int]]  # one rank's micro-batches: row indices into its mini-batch shard


def row_lengths(batch: LearnerBatch) -> tuple[list[int], list[int]]:
    """(prompt tokens, response tokens) of every row."""
    prompt = batch.attention_mask[:, : batch.prompt_len].sum(-1)
    return prompt.tolist(), batch.response_mask.sum(-1).tolist()


def micro_batch_cost(rows: Sequence[int], prompt_lens: Sequence[int], response_lens: Sequence[int]) -> int:
    """Positions a compacted micro-batch of `rows` computes: rows × (longest prompt + longest response, ≥ 1)."""
    longest = max(prompt_lens[i] for i in rows) + max(max(response_lens[i] for i in rows), 1)
    return len(rows) * longest


def plan_rank(prompt_lens: Sequence[int], response_lens: Sequence[int], budget: int) -> Plan:
    """Rows, longest first, grouped greedily so that each micro-batch costs at most `budget` positions (a row longer
    than the budget is a micro-batch of its own)."""
    order = sorted(range(len(prompt_lens)), key=lambda i: prompt_lens[i] + response_lens[i], reverse=True)
    plan: Plan = []
    current: list[int] = []
    for i in order:
        if current and micro_batch_cost([*current, i], prompt_lens, response_lens) > budget:
            plan.append(current)
            current = []
        current.append(i)
    if current:
        plan.append(current)
    return plan


def plan_rank_packed(prompt_lens: Sequence[int], response_lens: Sequence[int], groups: Sequence[Sequence[int]],
                     budget: int) -> Plan:  # fmt: skip
    """`plan_rank` for group-packed rows (`learner.pack_groups`, packing.py): the units are prompt groups (one packed
    row of prompt + every response), longest first, so a micro-batch costs units × longest unit."""
    size = [prompt_lens[g[0]] + max(sum(response_lens[i] for i in g), 1) for g in groups]
    order = sorted(range(len(groups)), key=lambda u: size[u], reverse=True)
    plan: Plan = []
    current: list[int] = []  # unit indices
    for u in order:
        if current and (len(current) + 1) * max(size[v] for v in [*current, u]) > budget:
            plan.append([i for v in current for i in groups[v]])
            current = []
        current.append(u)
    if current:
        plan.append([i for v in current for i in groups[v]])
    return plan


def equalize(plans: list[Plan]) -> list[Plan]:
    """Split the largest micro-batches of the ranks that have fewer, until every rank has as many as the most."""
    target = max(len(p) for p in plans)
    for plan in plans:
        while len(plan) < target:
            j = max(range(len(plan)), key=lambda m: len(plan[m]))
            if len(plan[j]) < 2:
                raise ValueError(f"cannot split {sum(map(len, plan))} rows into {target} micro-batches")
            big = plan.pop(j)
            plan[j:j] = [big[: len(big) // 2], big[len(big) // 2 :]]
    return plans


def plan_micro_batches(shards: Sequence[LearnerBatch], budget: int, packed: bool = False) -> list[Plan]:
    """One plan per rank for its shard of one mini-batch (or of a log-prob pass), with equal micro-batch counts;
    `packed`: the rows of one prompt stay together (learner.pack_groups)."""
    if budget < 1:
        raise ValueError(f"micro_batch_tokens={budget} must be >= 1")
    if packed:
        return equalize([plan_rank_packed(*row_lengths(s), prompt_groups(s), budget) for s in shards])
    return equalize([plan_rank(*row_lengths(shard), budget) for shard in shards])
