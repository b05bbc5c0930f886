"""Which response tokens hold the final answer: the last ``\\boxed{...}`` (box included) or the ``#### x`` answer,
for the credit diagnostics (algorithms/credit.py: the share of the policy gradient on the answer tokens).

The span is found in the tokenizer's own decoding of the response ids and mapped back to tokens by decoding
prefixes (a binary search, O(L log L) per response in the tokenizer's Rust code), so it is exact for any tokenizer:
token i is an answer token when its text overlaps the span. A response without a marker has no answer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grpo_lambda.rewards.extract import AnswerRejected, gsm8k_marker_span, last_boxed_span


def answer_char_span(text: str) -> tuple[int, int] | None:
    """[start, end) of the answer the verifiers read: the whole last ``\\boxed{...}`` / ``\\fbox{...}``
    (`extract.last_boxed_span`), else the last ``#### x`` (`extract.gsm8k_marker_span`); None when there is
    neither, the last box never closes, or its content is rejected as too long or deep."""
    try:
        box = last_boxed_span(text)
    except AnswerRejected:
        return None
    if box is not None:
        return box[0], box[3]
    if max(text.rfind("\\boxed"), text.rfind("\\fbox")) >= 0:
        return None  # a last box that never closes: no answer (as the verifiers read it)
    hashes = gsm8k_marker_span(text)
    return None if hashes is None else (hashes[0], hashes[2])


def _first_token_reaching(decode, ids: Sequence[int], chars: int) -> int:
    """The smallest n with len(decode(ids[:n])) > chars, minus one: the token holding character `chars`."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(ids[: mid + 1])) > chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def answer_token_mask(tokenizer, responses: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """[B, width] bool: the tokens of each response that overlap its answer span (`answer_char_span` of the
    tokenizer's decoding, special tokens skipped)."""

    def decode(ids):
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    out = torch.zeros(len(responses), width, dtype=torch.bool)
    for b, ids in enumerate(responses):
        span = answer_char_span(decode(ids))
        if span is None:
            continue
        first = _first_token_reaching(decode, ids, span[0])
        last = _first_token_reaching(decode, ids, span[1] - 1)
        out[b, first : min(last, len(ids) - 1) + 1] = True
    return out
