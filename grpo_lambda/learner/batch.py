"""Padded learner batches: [prompt (left-padded) | response (right-padded)] rows, and how they are split.

Layout of row b, with P = longest prompt and T = longest response of the batch:

    input_ids[b]      = [pad ... pad, prompt_b, response_b, pad ... pad]      shape [P + T]
    attention_mask[b] = [0 ... 0,     1 ...     1 ...       0 ... 0]
    position_ids[b]   = cumsum(attention_mask[b]) - 1, clamped at 0            (prompt starts at position 0)
    response_mask[b]  = [1 ... 1 (len(response_b)), 0 ... 0]                  shape [T], bool

so every response starts at column P and the logits at columns P-1 .. P+T-2 predict it.

Splitting (sizes in samples): a batch of N samples is cut into mini-batches of `mini_batch_samples` (one optimiser step
each); a mini-batch is split across `world_size` ranks (rank r takes the r-th contiguous slice) and each rank's slice
into micro-batches of `micro_batch_samples` (one forward/backward each). The loss normalisers (`MiniBatchCounts`) are
the counts of the whole mini-batch, computed here on the driver before sharding, so ranks need no extra all-reduce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MiniBatchCounts:
    """Valid response tokens and sequences in one whole optimiser mini-batch (all micro-batches, all ranks)."""

    num_tokens: int
    num_seqs: int


@dataclass
class LearnerBatch:
    """Tensors for the learner; B rows, P prompt columns, T response columns (see module docstring)."""

    input_ids: Tensor  # [B, P+T] int64
    attention_mask: Tensor  # [B, P+T] int64
    position_ids: Tensor  # [B, P+T] int64
    response_mask: Tensor  # [B, T] bool
    advantages: Tensor  # [B] float32
    old_logp: Tensor | None = None  # [B, T] float32, θ_old's log-probabilities of the response tokens
    ref_logp: Tensor | None = None  # [B, T] float32, the reference policy's
    behaviour_logp: Tensor | None = (
        None  # [B, T] float32, the rollout engine's sampling log-probs log μ (algorithm.behaviour_is)
    )

    def __post_init__(self):
        B, L = self.input_ids.shape
        T = self.response_mask.shape[-1]
        if self.response_mask.dtype != torch.bool:
            raise TypeError(f"response_mask must be bool, got {self.response_mask.dtype}")
        if self.attention_mask.shape != (B, L) or self.position_ids.shape != (B, L):
            raise ValueError("input_ids, attention_mask and position_ids must all be [B, P+T]")
        if self.response_mask.shape[0] != B or T > L - 1:
            raise ValueError(
                f"response_mask {tuple(self.response_mask.shape)} does not fit input_ids {(B, L)}"
            )
        if self.advantages.shape != (B,):
            raise ValueError(f"advantages must be [B]={B}, got {tuple(self.advantages.shape)}")
        for name in ("old_logp", "ref_logp", "behaviour_logp"):
            value = getattr(self, name)
            if value is not None and value.shape != (B, T):
                raise ValueError(f"{name} must be [B, T]={(B, T)}, got {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_len(self) -> int:
        """P: the response columns start here."""
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def response_len(self) -> int:
        """T."""
        return self.response_mask.shape[1]

    @property
    def response_ids(self) -> Tensor:
        """[B, T] response token ids (pad where response_mask is False)."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    def replace(self, **changes) -> LearnerBatch:
        return dataclasses.replace(self, **changes)

    def select(self, rows: slice | Tensor | Sequence[int]) -> LearnerBatch:
        """The batch restricted to some rows (same P and T)."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long)
        return LearnerBatch(**{k: (None if v is None else v[rows]) for k, v in self._fields().items()})

    def to(self, device: torch.device | str) -> LearnerBatch:
        return LearnerBatch(**{k: (None if v is None else v.to(device)) for k, v in self._fields().items()})

    def compact(self) -> LearnerBatch:
        """Drop columns that are padding in every row: leading prompt pads and trailing response pads.

        A micro-batch of short samples cut from a batch with one long sample then costs what it holds.
        The response still starts at the (new) prompt_len; log-probs come back [B, T'] with T' <= T.
        """
        P = self.prompt_len
        prompt_valid = self.attention_mask[:, :P].bool().any(0)
        first = int(prompt_valid.nonzero()[0]) if prompt_valid.any() else P - 1
        first = min(first, P - 1)  # keep at least one prompt column: it predicts the first response token
        resp_valid = self.response_mask.any(0)
        T_new = int(resp_valid.nonzero()[-1]) + 1 if resp_valid.any() else 1
        keep = slice(first, P + T_new)
        return LearnerBatch(
            input_ids=self.input_ids[:, keep],
            attention_mask=self.attention_mask[:, keep],
            position_ids=self.position_ids[:, keep],
            response_mask=self.response_mask[:, :T_new],
            advantages=self.advantages,
            old_logp=None if self.old_logp is None else self.old_logp[:, :T_new],
            ref_logp=None if self.ref_logp is None else self.ref_logp[:, :T_new],
            behaviour_logp=None if self.behaviour_logp is None else self.behaviour_logp[:, :T_new],
        )

    def _fields(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _as_rows(name: str, values, lengths: Sequence[int]) -> list[Tensor]:
    """Per-response float rows from a list of lists or a [B, >=T_b] tensor, checked against response lengths."""
    if isinstance(values, Tensor):
        if values.dim() != 2 or values.shape[0] != len(lengths) or values.shape[1] < max(lengths, default=0):
            raise ValueError(f"{name}: tensor of shape {tuple(values.shape)} does not cover the responses")
        return [values[b, :n].float() for b, n in enumerate(lengths)]
    if len(values) != len(lengths):
        raise ValueError(f"{name} has {len(values)} rows for {len(lengths)} responses")
    rows = []
    for b, (v, n) in enumerate(zip(values, lengths)):
        if len(v) != n:
            raise ValueError(f"{name}[{b}] has {len(v)} values for a response of {n} tokens")
        rows.append(torch.as_tensor(v, dtype=torch.float32))
    return rows


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    advantages: Sequence[float] | Tensor,
    *,
    old_logp: Sequence[Sequence[float]] | Tensor | None = None,
    ref_logp: Sequence[Sequence[float]] | Tensor | None = None,
    behaviour_logp: Sequence[Sequence[float]] | Tensor | None = None,
    pad_token_id: int = 0,
) -> LearnerBatch:
    """Pad B (prompt, response) token lists into a `LearnerBatch` (layout in the module docstring).

    Prompts must be non-empty (the last prompt token predicts the first response token); a response may be empty.
    """
    B = len(prompt_ids)
    if B == 0:
        raise ValueError("build_batch: no samples")
    if len(response_ids) != B:
        raise ValueError(f"build_batch: {B} prompts but {len(response_ids)} responses")
    advantages = torch.as_tensor(advantages, dtype=torch.float32).reshape(-1)
    if advantages.shape[0] != B:
        raise ValueError(f"build_batch: {B} samples but {advantages.shape[0]} advantages")
    empty = [b for b, p in enumerate(prompt_ids) if len(p) == 0]
    if empty:
        raise ValueError(
            f"build_batch: prompts {empty[:5]} are empty; every sample needs at least one prompt token"
        )
    p_lens = [len(p) for p in prompt_ids]
    r_lens = [len(r) for r in response_ids]
    P, T = max(p_lens), max(r_lens)
    if T == 0:
        raise ValueError("build_batch: every response is empty; there is nothing to learn from")

    input_ids = torch.full((B, P + T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[b, P - len(p) : P] = torch.as_tensor(p, dtype=torch.long)
        input_ids[b, P : P + len(r)] = torch.as_tensor(r, dtype=torch.long)
        attention_mask[b, P - len(p) : P + len(r)] = 1
        response_mask[b, : len(r)] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def padded(name, values):
        if values is None:
            return None
        out = torch.zeros((B, T), dtype=torch.float32)
        for b, row in enumerate(_as_rows(name, values, r_lens)):
            out[b, : row.shape[0]] = row
        return out

    return LearnerBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        response_mask=response_mask,
        advantages=advantages,
        old_logp=padded("old_logp", old_logp),
        ref_logp=padded("ref_logp", ref_logp),
        behaviour_logp=padded("behaviour_logp", behaviour_logp),
    )


def concat_batches(batches: Sequence[LearnerBatch]) -> LearnerBatch:
    """Stack batches of the same P and T along rows."""
    if not batches:
        raise ValueError("concat_batches: nothing to concatenate")
    shapes = {(b.prompt_len, b.response_len) for b in batches}
    if len(shapes) != 1:
        raise ValueError(f"concat_batches: batches have different (P, T): {sorted(shapes)}")
    fields = {}
    for f in dataclasses.fields(LearnerBatch):
        values = [getattr(b, f.name) for b in batches]
        if any(v is None for v in values):
            if not all(v is None for v in values):
                raise ValueError(f"concat_batches: {f.name} is set in some batches and missing in others")
            fields[f.name] = None
        else:
            fields[f.name] = torch.cat(values, dim=0)
    return LearnerBatch(**fields)


def split_batch(batch: LearnerBatch, size: int, *, what: str = "micro_batch_samples") -> list[LearnerBatch]:
    """Contiguous pieces of `size` rows; `len(batch)` must be a multiple of `size` (`what` names the setting)."""
    if size < 1 or len(batch) % size:
        raise ValueError(f"{what}={size} must be >= 1 and divide the {len(batch)} samples it splits")
    return [batch.select(slice(i, i + size)) for i in range(0, len(batch), size)]


def mini_batch_counts(
    batch: LearnerBatch, mini_batch_samples: int, keep: Tensor | None = None
) -> list[MiniBatchCounts]:
    """Global normalisers per mini-batch, computed before sharding (so no all-reduce is needed on the ranks).

    keep: [B] bool, the sequences that stay in the loss (algorithm.behaviour_is=mis / seq_filter drop the others:
    their tokens and sequences leave the normalisers); None = all. A mini-batch that keeps nothing counts 1."""
    minis = split_batch(batch, mini_batch_samples, what="mini_batch_samples")
    keep = torch.ones(len(batch), dtype=torch.bool) if keep is None else keep.to(torch.bool).cpu()
    kept = keep.view(len(minis), mini_batch_samples)
    return [
        MiniBatchCounts(num_tokens=max(int(mb.response_mask[k].sum()), 1), num_seqs=max(int(k.sum()), 1))
        for mb, k in zip(minis, kept)
    ]


def shard_for_data_parallel(
    batch: LearnerBatch, world_size: int, mini_batch_samples: int
) -> list[LearnerBatch]:
    """Rank r's shard: the r-th contiguous slice of every mini-batch, in mini-batch order."""
    per_rank, rest = divmod(mini_batch_samples, world_size)
    if rest or per_rank == 0:
        raise ValueError(
            f"mini_batch_samples={mini_batch_samples} must be a positive multiple of {world_size}"
        )
    minis = split_batch(batch, mini_batch_samples, what="mini_batch_samples")
    return [
        concat_batches([mb.select(slice(r * per_rank, (r + 1) * per_rank)) for mb in minis])
        for r in range(world_size)
    ]


def pad_rows(batch: LearnerBatch, multiple: int) -> tuple[LearnerBatch, int]:
    """Append copies of row 0 until len(batch) is a multiple of `multiple`; returns (batch, rows added).

    Ranks must run the same number of forward passes (ZeRO-3 gathers parameters collectively), so an uneven
    inference batch is padded and the extra rows' results are dropped by the caller.
    """
    extra = -len(batch) % multiple
    if extra == 0:
        return batch, 0
    return concat_batches([batch, batch.select([0] * extra)]), extra


def pad_response_dim(values: Tensor, T: int, value: float = 0.0) -> Tensor:
    """Right-pad a [B, T'] tensor to [B, T] (undoes `LearnerBatch.compact` on per-token outputs)."""
    if values.shape[1] > T:
        raise ValueError(f"cannot pad [.., {values.shape[1]}] down to T={T}")
    return torch.nn.functional.pad(values, (0, T - values.shape[1]), value=value)
