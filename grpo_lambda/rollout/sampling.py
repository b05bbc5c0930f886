"""What a rollout engine is asked for (`SamplingSpec`) and what it returns (`Sample`: tokens with their behaviour
log-probabilities log μ(o_t | q, o_<t))."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: `n` responses per prompt, each at most `max_tokens` long.

    `top_k=-1` and `top_p=1.0` disable those filters; `temperature=0` is greedy. `seed=None` draws fresh
    randomness; an integer makes the whole call reproducible (prompt i uses seed + i). `stop` strings end a
    response (kept in its text and token ids, so the learner sees what the policy produced). The values come from
    the validated run config (`rollout.*`, `eval.*`); vLLM's SamplingParams checks them again.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            raise TypeError("SamplingSpec.stop must be a sequence of strings, not a single string")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass
class Sample:
    """One sampled response. `response_logp[t]` = log μ(response_ids[t] | prompt, response_ids[:t]).

    `finish_reason` is "stop" (end-of-sequence token or a stop string; the token is included in
    `response_ids`) or "length" (hit `max_tokens`). `weights_version`: the engine's weights version that
    produced it (weights change only between generate calls, so one version covers the whole response).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    response_logp: list[float]
    text: str
    finish_reason: str
    weights_version: int = 0
