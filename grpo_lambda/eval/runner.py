"""Sampling and grading an evaluation: k responses per prompt from the rollout engines, each graded in the
verifier pool, and a majority vote per prompt whose answer equivalence the verifier decides.

    evaluator = Evaluator(rollout, verifier, cfg.reward)
    records = evaluator.sample(prompts, spec)        # one dict per response, prompt-major (k per prompt)
    maj = evaluator.majority(records)                # (dataset, id) -> maj@k score of that prompt

`python -m grpo_lambda.evaluate` (evaluate.py) and the trainer's evaluation during training both go through here;
eval/report.py reduces the records to avg@k, pass@j and maj@k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpo_lambda.config.schema import Config, RewardConfig
from grpo_lambda.data.templates import Prompt
from grpo_lambda.eval.metrics import maj_at_k
from grpo_lambda.eval.report import ProblemKey, group_by_problem
from grpo_lambda.rewards import VerifyRequest, request_for
from grpo_lambda.rewards.extract import normalize_answer
from grpo_lambda.rewards.verifiers import answer_verifier, extract_answer
from grpo_lambda.rollout.sampling import SamplingSpec


def eval_spec(cfg: Config, seed: int | None) -> SamplingSpec:
    """The evaluation's sampling settings (`eval.*`; response cap `eval.max_response_tokens`, else the model's)."""
    e = cfg.eval
    return SamplingSpec(n=e.samples_per_prompt, temperature=e.temperature, top_p=e.top_p if e.temperature else 1.0,
                        max_tokens=e.max_response_tokens or cfg.model.max_response_tokens, seed=seed)  # fmt: skip


class Evaluator:
    """The rollout engines (`RolloutGroup`) and the verifier pool (`VerifierPool`) of a run, used for evaluation."""

    def __init__(self, rollout, verifier, reward: RewardConfig, answer_format: str | None = None):
        """answer_format: strict grading's one answer marker (data.templates.answer_format), None = lenient."""
        self.rollout, self.verifier, self.reward = rollout, verifier, reward
        self.answer_format = answer_format

    def sample(self, prompts: Sequence[Prompt], spec: SamplingSpec) -> list[dict[str, Any]]:
        """Generate `spec.n` responses per prompt and grade each: one record per response, prompt-major."""
        rw = self.reward
        groups = self.rollout.generate(list(prompts), spec)
        pairs = [(p, i, s) for p, group in zip(prompts, groups) for i, s in enumerate(group)]
        results = self.verifier.score([request_for(p, s.text, rw, self.answer_format) for p, _, s in pairs])
        records = []
        for (p, i, s), r in zip(pairs, results):
            rec = {
                "dataset": p.dataset, "id": p.id, "sample": i, "prompt": p.text, "response": s.text,
                "extracted": extract_answer(s.text, p.verifier, rw.math_fallback, self.answer_format), "gold": p.answer,
                "verifier": p.verifier, "outcome": r.outcome, "reward": r.reward,
                "response_tokens": len(s.response_ids), "truncated": s.finish_reason == "length",
            }  # fmt: skip
            if r.detail:
                rec["detail"] = r.detail
            records.append(rec)
        return records

    def majority(self, records: Sequence[dict[str, Any]]) -> dict[ProblemKey, float]:
        """maj@k of every prompt in `records`: its extracted answers grouped by equivalence, as the prompt's verifier
        decides it (answer b graded against answer a as gold; pairs of equal normal forms are equal without a
        check), then `metrics.maj_at_k` (largest class wins; a tie scores the fraction of tied classes correct)."""
        by_prompt = group_by_problem(records)
        pairs: list[tuple[str, str, str]] = []  # (verifier, a, b) to check
        for recs in by_prompt.values():
            distinct = _distinct_answers(recs)
            pairs += [(recs[0]["verifier"], a, b) for i, a in enumerate(distinct) for b in distinct[i + 1 :]]
        same_pairs = self._equivalent_pairs(pairs)
        out = {}
        for key, recs in by_prompt.items():
            verifier = recs[0]["verifier"]

            def same(a: str, b: str, v: str = verifier) -> bool:
                a, b = a.strip(), b.strip()
                return (
                    a == b
                    or normalize_answer(a) == normalize_answer(b)
                    or (v, a, b) in same_pairs
                    or (v, b, a) in same_pairs
                )

            out[key] = maj_at_k(
                [r["extracted"] for r in recs], [r["outcome"] == "correct" for r in recs], same
            )
        return out

    def _equivalent_pairs(self, pairs: list[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """The pairs the verifier calls equal (one pool batch; a timeout or error counts as not equal)."""
        if not pairs:
            return set()
        results = self.verifier.score(
            [VerifyRequest(response=f"\\boxed{{{a}}}", answer=b, verifier=answer_verifier(v), answer_format="boxed")
             for v, a, b in pairs]  # answer a, boxed, graded against b: strict or not, the box is what is read
        )  # fmt: skip
        return {pair for pair, r in zip(pairs, results) if r.outcome == "correct"}


def _distinct_answers(recs: Sequence[dict[str, Any]]) -> list[str]:
    """One answer per normal form, in first-seen order (those with equal normal forms need no check)."""
    seen: dict[str, str] = {}
    for rec in recs:
        a = rec["extracted"]
        if a is not None:
            seen.setdefault(normalize_answer(a.strip()), a.strip())
    return list(seen.values())
