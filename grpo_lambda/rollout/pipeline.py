"""Rollout ahead of the learner, with bounded staleness (`rollout.max_staleness` = k; docs/performance.md).

    pipeline = RolloutPipeline(rollout, sampler, spec_for, max_staleness=k)
    batch = pipeline.next(step)          # step's prompts and samples; batches step+1 … step+k keep generating
    pipeline.enforce_staleness(batch, learner_version, "drop")   # groups older than k versions: replaced
    pipeline.drain()                     # before a weight push: every submitted generation has finished
    state = pipeline.state_dict()        # what is in flight, samples included, for an exact resume

k = 0 is the synchronous loop: step s submits its batch and waits for it. With k ≥ 1 the batches of steps
s+1 … s+k are already submitted while step s trains. vLLM's `LLM.generate` runs a whole batch and each engine
actor runs its calls in order, so the weight push after step s lands once those generations end (no in-flight
update): batch s+k is sampled with the weights pushed after step s−1, i.e. version s, and trained at learner
version s+k. Its staleness (learner version at the update − the samples' version) is exactly k in steady state.

The sampler draws a batch when it is submitted; a checkpoint records the sampler's position *and* every
in-flight batch (its dataset indices and its finished samples), so a resumed run trains on exactly the prompts
and samples an uninterrupted run would have, none skipped or repeated.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpo_lambda.data.sampler import PromptSampler
from grpo_lambda.data.templates import Prompt
from grpo_lambda.rollout.group import PendingGeneration, RolloutGroup
from grpo_lambda.rollout.sampling import Sample, SamplingSpec


@dataclass
class Batch:
    """One step's prompts (dataset `indices` of the sampler) and, once generated, their samples [prompt][G]."""

    step: int
    indices: list[int]
    prompts: list[Prompt]
    pending: PendingGeneration | None = None
    samples: list[list[Sample]] | None = None
    timing: dict[str, float] = field(default_factory=lambda: {"generate_s": 0.0, "idle_s": 0.0})
    dropped_stale: int = 0  # groups replaced by enforce_staleness


def staleness(samples: list[list[Sample]], learner_version: int) -> list[int]:
    """Per group: the learner's version at the update minus the oldest weights version among its samples."""
    return [learner_version - min(s.weights_version for s in group) for group in samples]


class RolloutPipeline:
    """Keeps the batches of steps s … s+k submitted to the engines (see the module docstring).

    spec_for(step, salt): the sampling settings of a step's batch (its seed depends on step and salt only, so a
    resumed run samples the same way).
    """

    def __init__(
        self,
        rollout: RolloutGroup,
        sampler: PromptSampler,
        spec_for: Callable[[int, str], SamplingSpec],
        max_staleness: int = 0,
    ):
        self.rollout, self.sampler, self.spec_for, self.k = rollout, sampler, spec_for, max_staleness
        self.in_flight: deque[Batch] = deque()

    def next(self, step: int) -> Batch:
        """Step `step`'s batch with its samples (waits for its generation); first tops the pipeline up to
        step + k."""
        last = self.in_flight[-1].step if self.in_flight else step - 1
        for s in range(last + 1, step + self.k + 1):
            indices = self.sampler.next_indices()
            prompts = [self.sampler.dataset[i] for i in indices]
            pending = self.rollout.submit(prompts, self.spec_for(s, "rollout"))
            self.in_flight.append(Batch(s, indices, prompts, pending))
        batch = self.in_flight.popleft()
        if batch.step != step:
            raise RuntimeError(
                f"rollout pipeline holds step {batch.step}'s batch where step {step}'s was due"
            )
        return self._collect(batch)

    def enforce_staleness(self, batch: Batch, learner_version: int, policy: str) -> int:
        """Replace the groups whose staleness exceeds k, generated now with the current weights: `drop` takes
        new prompts from the sampler, `wait` regenerates the same prompts. Returns how many were replaced."""
        stale = [i for i, age in enumerate(staleness(batch.samples, learner_version)) if age > self.k]
        if not stale:
            return 0
        if policy == "drop":
            for i, j in zip(stale, self.sampler.next_indices(len(stale)), strict=True):
                batch.indices[i], batch.prompts[i] = j, self.sampler.dataset[j]
        fresh = self.rollout.generate([batch.prompts[i] for i in stale], self.spec_for(batch.step, "stale"))
        for i, group in zip(stale, fresh, strict=True):
            batch.samples[i] = group
        batch.dropped_stale += len(stale)
        return len(stale)

    def drain(self) -> None:
        """Wait until every submitted generation has finished (before a weight push: the push would queue
        behind them on the engines anyway; waiting here keeps the sync timer honest)."""
        self.rollout.wait([b.pending for b in self.in_flight if b.pending is not None])

    # ------------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> list[dict[str, Any]]:
        """Every in-flight batch: its step, dataset indices and samples (generation is awaited first)."""
        out = []
        for b in map(self._collect, self.in_flight):
            groups = [[_sample_state(s) for s in group] for group in b.samples]
            out.append({"step": b.step, "indices": list(b.indices), "samples": groups})
        return out

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        """Restore the in-flight batches of a checkpoint (the sampler's own state is restored separately)."""
        self.in_flight.clear()
        for b in state:
            prompts = [self.sampler.dataset[i] for i in b["indices"]]
            samples = [[Sample(prompt_ids=p.token_ids, **s) for s in group]
                       for p, group in zip(prompts, b["samples"], strict=True)]  # fmt: skip
            self.in_flight.append(Batch(int(b["step"]), list(b["indices"]), prompts, samples=samples))

    def _collect(self, batch: Batch) -> Batch:
        if batch.samples is None:
            batch.samples, batch.timing = self.rollout.collect(batch.pending)
            batch.pending = None
        return batch


def _sample_state(sample: Sample) -> dict[str, Any]:
    state = dataclasses.asdict(sample)
    del state["prompt_ids"]  # the prompt's own token ids, restored from the dataset
    return state
