"""The rollout pipeline's bookkeeping (rollout/pipeline.py): which batch is generated when, by which weights
version, what staleness it has at the update, what a checkpoint records. The engines are replaced by a recorder
that stamps each sample with the weights version it holds when the call *runs* (calls run in submission order,
as on a Ray actor), so the test follows the same timeline as the real trainer; tests/integration/test_trainer.py
runs the real thing."""

from __future__ import annotations

import json

import pytest

from grpo_lambda.data.sampler import PromptSampler
from grpo_lambda.data.templates import Prompt
from grpo_lambda.rollout.group import PendingGeneration, Shard
from grpo_lambda.rollout.pipeline import RolloutPipeline, staleness
from grpo_lambda.rollout.sampling import Sample, SamplingSpec

G = 2


class RecordingEngines:
    """Runs submitted generations lazily, in order, with the version current when each runs: a push waits for
    everything submitted before it (as an engine actor's queue does)."""

    def __init__(self):
        self.version, self.queue, self.done, self.calls = 0, [], {}, []

    def submit(self, prompts, spec):
        shard = Shard(0, None, [p.token_ids for p in prompts], ref=len(self.calls))
        pending = PendingGeneration([shard], num_prompts=len(prompts), num_engines=1, spec=spec)
        self.calls.append((prompts, spec))
        self.queue.append(pending)
        return pending

    def _run_queue(self):
        for pending in self.queue:
            prompts, spec = self.calls[pending.refs[0]]
            self.done[pending.refs[0]] = self._samples(prompts, spec)
        self.queue.clear()

    def _samples(self, prompts, spec):
        return [[Sample(p.token_ids, [spec.seed, j], [-0.5, -0.5], f"{p.id}/{j}", "stop", self.version)
                 for j in range(G)] for p in prompts]  # fmt: skip

    def collect(self, pending):
        self._run_queue()
        return self.done.pop(pending.refs[0]), {"generate_s": 1.0, "idle_s": 0.0}

    def wait(self, pendings):
        self._run_queue()

    def generate(self, prompts, spec):
        self._run_queue()
        return self._samples(prompts, spec)

    def push(self):
        self._run_queue()  # the update queues behind every submitted generation
        self.version += 1


def make(k, n=20, per_step=3):
    prompts = [Prompt(f"p{i}", "", "", "numeric", "d", "", [i + 1]) for i in range(n)]
    sampler = PromptSampler(prompts, per_step, seed=1)
    engines = RecordingEngines()
    pipeline = RolloutPipeline(
        engines, sampler, lambda step, salt: SamplingSpec(n=G, seed=hash((step, salt))), k
    )
    return pipeline, sampler, engines


def run(pipeline, engines, steps, start=0):
    """The trainer's loop, minus the learner: returns per step (prompt ids, staleness per group)."""
    out = []
    for step in range(start, start + steps):
        version = engines.version  # one push per update: the learner's version
        batch = pipeline.next(step)
        pipeline.enforce_staleness(batch, version, "drop")
        out.append(([p.id for p in batch.prompts], staleness(batch.samples, version)))
        pipeline.drain()
        engines.push()
    return out


@pytest.mark.parametrize("k", [0, 1, 2])
def test_staleness_is_k_in_steady_state_and_prompts_follow_the_sampler(k):
    pipeline, sampler, engines = make(k)
    steps = run(pipeline, engines, 6)
    assert [max(s) for _, s in steps] == [min(i, k) for i in range(6)]  # the first k batches are fresher
    # every prompt the sampler drew for steps 0..5 is trained in order, none skipped or repeated
    reference = PromptSampler(sampler.dataset, 3, seed=1)
    assert [ids for ids, _ in steps] == [[p.id for p in reference.next_batch()] for _ in range(6)]
    assert len(pipeline.in_flight) == k  # batches 6 .. 5+k already submitted


def test_k0_submits_only_the_current_batch():
    pipeline, _, engines = make(0)
    pipeline.next(0)
    assert len(engines.calls) == 1 and not pipeline.in_flight


@pytest.mark.parametrize("policy", ["drop", "wait"])
def test_groups_older_than_k_are_replaced_and_counted(policy):
    pipeline, sampler, engines = make(1)
    batch = pipeline.next(0)  # version 0 samples
    old_ids = [p.id for p in batch.prompts]
    replaced = pipeline.enforce_staleness(batch, learner_version=2, policy=policy)  # staleness 2 > k = 1
    assert replaced == 3 == batch.dropped_stale
    assert staleness(batch.samples, 2) == [2, 2, 2]  # regenerated now: the engines still hold version 0 here
    new_ids = [p.id for p in batch.prompts]
    assert (new_ids == old_ids) == (policy == "wait")
    assert pipeline.enforce_staleness(batch, learner_version=1, policy=policy) == 0  # within k: kept


def test_checkpoint_of_in_flight_batches_resumes_exactly():
    """Save after step 2 with k = 2, restore into a fresh pipeline and sampler (through JSON, as driver.json
    does): steps 3.. get the same prompts and the same samples (versions included) as an uninterrupted run."""
    full, _, full_engines = make(2)
    expected = run(full, full_engines, 6)

    first, sampler, engines = make(2)
    run(first, engines, 3)
    state = json.loads(json.dumps({"sampler": sampler.state_dict(), "in_flight": first.state_dict()}))
    assert [b["step"] for b in state["in_flight"]] == [3, 4]

    resumed, sampler2, engines2 = make(2)
    sampler2.load_state_dict(state["sampler"])
    resumed.load_state_dict(state["in_flight"])
    engines2.version = engines.version  # the checkpoint's weights version reaches the engines
    got = run(resumed, engines2, 3, start=3)
    assert got == expected[3:]
    assert len(engines2.calls) == 3  # only batches 5, 6, 7 are generated after the resume


def test_restored_samples_keep_their_tokens_and_versions():
    first, sampler, engines = make(1)
    run(first, engines, 2)
    saved = first.state_dict()
    resumed, sampler2, _ = make(1)
    sampler2.load_state_dict(sampler.state_dict())
    resumed.load_state_dict(json.loads(json.dumps(saved)))
    batch = resumed.in_flight[0]
    original = first.in_flight[0]
    assert batch.step == original.step == 2
    assert batch.samples == original.samples  # prompt ids, tokens, log-probs, text, version
