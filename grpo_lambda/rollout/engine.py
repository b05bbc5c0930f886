"""The engine-agnostic rollout interface: what the trainer asks of any generation backend.

A backend (today: vLLM, in `vllm_engine.py`) samples `n` responses per prompt from token-id prompts and returns,
for every sampled token, its behaviour log-probability log μ(o_t | q, o_<t). It takes versioned weight updates
from the learner in place, and can read its effective weights back so a test or a check mode can prove that the
engine samples from exactly the learner's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: `n` responses per prompt, each at most `max_tokens` long.

    `top_k=-1` and `top_p=1.0` disable those filters; `temperature=0` is greedy. `seed=None` draws fresh
    randomness; an integer makes the whole call reproducible (prompt i uses seed + i). `stop` strings end a
    response (kept in its text and token ids, so the learner sees what the policy produced).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingSpec.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingSpec.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingSpec.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingSpec.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"SamplingSpec.top_k must be -1 (off) or >= 1, got {self.top_k}")
        if isinstance(self.stop, str):
            raise TypeError("SamplingSpec.stop must be a sequence of strings, not a single string")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass
class Sample:
    """One sampled response. `response_logp[t]` = log μ(response_ids[t] | prompt, response_ids[:t]).

    `finish_reason` is "stop" (end-of-sequence token or a stop string; the token is included in
    `response_ids`) or "length" (hit `max_tokens`).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    response_logp: list[float]
    text: str
    finish_reason: str


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation backend that the RolloutWorker actor wraps."""

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[list[Sample]]:
        """Sample `spec.n` responses per prompt; outer list: prompts (input order), inner: samples."""
        ...

    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> None:
        """Replace the engine's weights in place by learner tensors (Hugging Face names); set the version."""
        ...

    def weights_version(self) -> int:
        """Version of the weights now loaded (0 = as loaded from disk)."""
        ...

    def read_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The weights the engine actually computes with, under Hugging Face names, on CPU."""
        ...

    def verify_weights(self, named_tensors: dict[str, torch.Tensor], atol: float = 0.0) -> list[str]:
        """Names whose engine weights differ from `named_tensors` by more than `atol` (empty: in sync)."""
        ...

    def weight_checksums(self, names: list[str] | None = None) -> dict[str, float]:
        """`weight_checksums(read_weights(names))`: a cheap fingerprint to log or compare across engines."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory while the learner runs (a no-op where unsupported)."""
        ...

    def wake_up(self) -> None:
        """Undo `sleep` (a no-op where unsupported)."""
        ...

    def shutdown(self) -> None:
        """Release the engine."""
        ...


def weight_checksums(named_tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """A cheap fingerprint per tensor (float64 sum of the values): equal weights give equal checksums."""
    return {name: float(t.detach().to(torch.float64).sum()) for name, t in named_tensors.items()}


def mismatched_weights(
    engine: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 0.0
) -> list[str]:
    """Names in `expected` that are missing from `engine`, differ in shape, or differ by more than `atol`.

    Compared in the engine's dtype (a learner's fp32 master weights match a bf16 engine when they round to it).
    """
    bad = []
    for name, want in expected.items():
        got = engine.get(name)
        if got is None or tuple(got.shape) != tuple(want.shape):
            bad.append(name)
            continue
        want = want.detach().to(device=got.device, dtype=got.dtype)
        if atol == 0.0:
            ok = torch.equal(got, want)
        else:
            ok = bool(((got.float() - want.float()).abs() <= atol).all())
        if not ok:
            bad.append(name)
    return sorted(bad)
