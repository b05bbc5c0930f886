"""Group packing (`learner.pack_groups`): the G responses to one prompt share one row, the prompt computed once.

A padded batch repeats a prompt in each of its G rows and pads every row to the longest. A packed row holds

    [prompt, response_1, response_2, …, response_g]          positions 0 … |p|−1, then |p| … |p|+|r_j|−1 for each j

with an attention mask that lets response j see the prompt and its own earlier tokens only (no attention across
responses, positions restarting after the prompt), so every response token's logits are those of its own padded row
up to rounding: the same model, the same inputs, the same positions, attention over the same keys. Rows of the
micro-batch with the same prompt ids form one packed row; rows with a prompt of their own are packed alone (no
sharing, no padding inside). The mask is a dense [U, 1, N, N] additive mask (0 = attend, the dtype's minimum =
not), which eager and SDPA attention both take as given; U packed rows of N positions.

What it saves on a CPU (scripts/bench_step.py, workload W): the prompt's forward/backward (G−1)/G of the time,
and the padding between responses of different lengths. GPUs would rather use varlen flash-attention (no N×N
mask); that path is not written yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import LearnerBatch


@dataclass
class PackedRows:
    """Model inputs for U packed rows and where each sample's logits come from."""

    input_ids: Tensor  # [U, N]
    position_ids: Tensor  # [U, N]
    attention_mask: Tensor  # [U, 1, N, N] additive, model dtype
    row: Tensor  # [B] packed row of each sample
    index: Tensor  # [B, T] position in that row whose logits predict response token t (0 where padding)
    first_needed: int  # the smallest position any index uses: logits before it are not computed


def prompt_groups(batch: LearnerBatch) -> list[list[int]]:
    """Rows sharing identical prompt ids, in order of first appearance."""
    P = batch.prompt_len
    groups: dict[tuple[int, ...], list[int]] = {}
    for b in range(len(batch)):
        ids = batch.input_ids[b, :P][batch.attention_mask[b, :P].bool()]
        groups.setdefault(tuple(ids.tolist()), []).append(b)
    return list(groups.values())


def packed_positions(batch: LearnerBatch) -> tuple[int, int]:
    """(positions computed, positions holding a token) of the packed form: U rows × the longest row, and each
    prompt once plus every response (the learner/padding_frac metric)."""
    P = batch.prompt_len
    resp = batch.response_mask.sum(-1).tolist()
    sizes = [
        int(batch.attention_mask[g[0], :P].sum()) + sum(int(resp[b]) for b in g) for g in prompt_groups(batch)
    ]
    return len(sizes) * max(sizes), sum(sizes)


def pack(batch: LearnerBatch, pad_token_id: int, dtype: torch.dtype) -> PackedRows:
    """The packed form of a (compacted) batch: one row per prompt group (see the module docstring)."""
    P, T, B = batch.prompt_len, batch.response_len, len(batch)
    resp_len = batch.response_mask.sum(-1).tolist()
    groups = prompt_groups(batch)
    rows, positions, segments = [], [], []  # segment: 0 = prompt, j + 1 = response j (per row)
    row_of = torch.zeros(B, dtype=torch.long)
    index = torch.zeros((B, T), dtype=torch.long)
    for u, members in enumerate(groups):
        prompt = batch.input_ids[members[0], :P][batch.attention_mask[members[0], :P].bool()]
        n_p = len(prompt)
        ids, pos, seg = [prompt], [torch.arange(n_p)], [torch.zeros(n_p, dtype=torch.long)]
        offset = n_p
        for j, b in enumerate(members):
            n = int(resp_len[b])
            ids.append(batch.input_ids[b, P : P + n])
            pos.append(torch.arange(n_p, n_p + n))
            seg.append(torch.full((n,), j + 1, dtype=torch.long))
            row_of[b] = u
            if n:  # token 0 is predicted by the prompt's last position, token t by the response's token t − 1
                index[b, 0] = n_p - 1
                index[b, 1:n] = torch.arange(offset, offset + n - 1)
            offset += n
        rows.append(torch.cat(ids))
        positions.append(torch.cat(pos))
        segments.append(torch.cat(seg))
    N = max(len(r) for r in rows)
    U = len(rows)
    input_ids = torch.full((U, N), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((U, N), dtype=torch.long)
    segment = torch.full((U, N), -1, dtype=torch.long)  # -1: padding
    for u, (r, p, s) in enumerate(zip(rows, positions, segments, strict=True)):
        input_ids[u, : len(r)], position_ids[u, : len(p)], segment[u, : len(s)] = r, p, s
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((N, N), dtype=torch.bool).tril()
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(N, dtype=torch.bool)  # padding queries see themselves (their outputs are never read)
    mask = torch.zeros((U, 1, N, N), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    needed = index[batch.response_mask]
    first = int(needed.min()) if needed.numel() else 0
    return PackedRows(input_ids, position_ids, mask, row_of, index, first)


def packed_response_logits(model, batch: LearnerBatch, pad_token_id: int = 0) -> Tensor:
    """Logits [B, T, V] at the positions that predict each row's response tokens, computed on packed rows
    (`response_logits`' packed twin: the same values up to rounding)."""
    dtype = next(model.parameters()).dtype
    packed = pack(batch, pad_token_id, dtype if dtype.is_floating_point else torch.float32)
    device = batch.input_ids.device
    N = packed.input_ids.shape[1]
    keep = N - packed.first_needed
    out = model(
        input_ids=packed.input_ids.to(device),
        attention_mask=packed.attention_mask.to(device),
        position_ids=packed.position_ids.to(device),
        use_cache=False,
        logits_to_keep=keep,
    )
    logits = out.logits  # [U, keep, V]: positions first_needed … N − 1
    index = (packed.index - packed.first_needed).clamp(min=0).to(device)
    return logits[packed.row.to(device)[:, None], index]
