"""The GRPO-λ training loop (docs/design.md, "one step"): each phase of `Trainer.step` is one line, timed by its name.

    trainer = Trainer(cfg); summary = trainer.run()

`__init__` starts the roles (launch.py: Ray and placement; rollout/group.py: the vLLM engines; learner/group.py:
the DeepSpeed ranks; rewards/pool.py: the verifiers; distributed/weight_sync.py: learner -> engines).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from grpo_lambda import checkpoint, leftovers
from grpo_lambda.algorithms import compute_advantages
from grpo_lambda.algorithms.credit import credit_metrics, token_credit
from grpo_lambda.config.resolve import resolve_runtime
from grpo_lambda.config.schema import Config
from grpo_lambda.data.datasets import build_eval_rows, build_train_rows
from grpo_lambda.data.sampler import PromptSampler
from grpo_lambda.data.templates import Prompt, PromptFormatter, answer_format
from grpo_lambda.distributed.weight_sync import WeightSync
from grpo_lambda.eval import report
from grpo_lambda.eval.runner import Evaluator, eval_spec
from grpo_lambda.launch import engine_positions, init_ray, place, release, start_verifier
from grpo_lambda.learner.batch import LearnerBatch, build_batch
from grpo_lambda.learner.group import LearnerFailure, LearnerGroup
from grpo_lambda.models import resolve_model
from grpo_lambda.rewards import VerifyResult, outcome_metrics, request_for
from grpo_lambda.rewards.answer_tokens import answer_token_mask
from grpo_lambda.rollout.group import RolloutGroup
from grpo_lambda.rollout.pipeline import Batch, RolloutPipeline, staleness
from grpo_lambda.rollout.sampling import Sample, SamplingSpec
from grpo_lambda.tracking import Tracker
from grpo_lambda.utils import Timer, set_seed, step_seed


@dataclass
class Rollout:
    """One step's groups: prompts[i] has samples[i] (G of them) with rewards and outcomes, prompt-major."""

    prompts: list[Prompt]
    samples: list[list[Sample]]
    rewards: torch.Tensor  # [P*G]
    outcomes: list[VerifyResult]

    def flat(self) -> list[Sample]:
        return [s for group in self.samples for s in group]


class Trainer:
    def __init__(self, cfg: Config):
        from transformers import AutoTokenizer

        self.cfg, self.timer = cfg, Timer()
        set_seed(cfg.trainer.seed)
        train_rows, eval_rows = build_train_rows(cfg), build_eval_rows(cfg)  # DataError before Ray starts
        self.model_path = str(resolve_model(cfg.model.path))
        self.tokenizer = tokenizer = AutoTokenizer.from_pretrained(
            cfg.model.tokenizer_path or self.model_path
        )
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        )
        self.formatter = PromptFormatter(tokenizer, cfg.data.prompt_template, cfg.model.use_chat_template,
                                         cfg.model.max_prompt_tokens)  # fmt: skip
        prompts, dropped = self.formatter.format_rows(train_rows)
        if dropped:
            print(f"[grpo-lambda] dropped {len(dropped)} prompts longer than model.max_prompt_tokens")
        # strict grading: the one answer marker the prompt asks for (reward.strict_format), else None
        self.answer_format = answer_format(cfg.data.prompt_template, cfg.reward.strict_format)
        self.sampler = PromptSampler(prompts, cfg.data.prompts_per_step, cfg.data.seed, cfg.data.shuffle)
        self.eval_sets = {name: self.formatter.format_rows(rows)[0] for name, rows in eval_rows.items()}

        reaped = leftovers.reap(cfg.run_dir)  # what a killed driver of this run left running (docs/faults.md)
        if reaped:
            print(f"[grpo-lambda] ended processes {reaped}, left by a killed driver of this run")
        gpus = init_ray(cfg)
        for line in resolve_runtime(cfg, gpus):  # before any role starts: they read the resolved values
            print(f"[grpo-lambda] {line}", flush=True)
        leftovers.record(cfg.run_dir)  # Ray's processes, for the next start should this driver be killed
        self.verifier = start_verifier(cfg)
        self.placement = place(cfg, gpus)
        self.rollout = RolloutGroup(
            cfg, self.model_path, self.placement["rollout"], gpus, engine_positions(cfg)
        )
        self.learner = LearnerGroup(cfg, self.model_path, placement=self.placement["learner"])
        self.weight_sync = WeightSync(cfg, self.learner, self.rollout, gpus)
        self.pipeline = RolloutPipeline(
            self.rollout, self.sampler, self._step_spec, cfg.max_staleness_for(gpus)
        )
        self.step_num = 0
        self.consecutive_skips = 0  # steps in a row whose every optimiser update was skipped (non-finite)
        self.checkpoint_failures = 0  # checkpoints not written (trainer.on_checkpoint_error=warn)
        resume_from = checkpoint.find_resume(cfg.run_dir, cfg.trainer.resume)
        if resume_from is not None:
            self._restore(resume_from)
        self.tracker = Tracker.for_run(cfg, start_step=self.step_num)
        leftovers.record(cfg.run_dir)  # now with the actors' processes

    # -------------------------------------------------------------------------------------- one step
    def step(self) -> dict[str, float]:
        cfg, timer, a, r = self.cfg, self.timer, self.cfg.algorithm, self.cfg.rollout
        timer.reset()
        t0 = time.perf_counter()
        version = self.weight_sync.version  # the learner's weights at this update (one push per update)
        with timer("generate" if self.pipeline.k == 0 else "learner_wait"):  # async: waiting on the engines
            generated = self.pipeline.next(self.step_num)
            self.pipeline.enforce_staleness(generated, version, r.stale_policy)
        with timer("reward"):
            rollout = self.score(generated.prompts, generated.samples)
        if a.dynamic_sampling:  # refills are timed as generate / reward
            rollout = self.dynamic_sampling(rollout, self._step_spec(self.step_num))
        adv = compute_advantages(rollout.rewards, cfg.rollout.samples_per_prompt, estimator=a.adv_estimator,
                                 eps=a.adv_eps, neg_clamp=a.neg_adv_clamp)  # fmt: skip
        batch = self._learner_batch(rollout, adv)
        with timer("sleep", record=self.rollout.sleep_mode):
            self.rollout.sleep()  # colocated GPUs: free the engines' memory for the learner
        if self.learner.needs_old_logp(len(batch)):
            with timer("old_logp"):
                batch = batch.replace(old_logp=self.learner.compute_logp(batch))
        if a.kl_coef > 0:
            with timer("ref_logp"):
                batch = batch.replace(ref_logp=self.learner.compute_logp(batch, reference=True))
        with timer("update"):
            metrics = self.learner.train_step(batch)
        weights_changed = self._require_finite(metrics)
        with timer("wake", record=self.rollout.sleep_mode):
            self.rollout.wake_up()
        if self.pipeline.k > 0:
            with timer("learner_wait"):
                self.pipeline.drain()  # the engines take weights between whole generate calls
        if weights_changed:  # else the engines already hold these weights: they keep them and their version
            with timer("sync"):
                self.weight_sync.push()
        metrics.update(self._rollout_metrics(rollout, adv))
        metrics.update(self._credit_metrics(batch, rollout))
        metrics.update(self._pipeline_metrics(generated, rollout, version))
        self.tracker.log_batch(self.step_num + 1, self._batch_record(rollout))
        metrics.update(timer.metrics())
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics["time/other_s"] = metrics["time/step_s"] - sum(timer.durations.values())
        self.step_num += 1
        return metrics

    def score(self, prompts: list[Prompt], samples: list[list[Sample]]) -> Rollout:
        """Grade every sample against its prompt's gold answer in the verifier pool."""
        rw = self.cfg.reward
        requests = [
            request_for(p, s.text, rw, self.answer_format)
            for p, group in zip(prompts, samples)
            for s in group
        ]
        results = self.verifier.score(requests)
        return Rollout(prompts, samples, torch.tensor([r.reward for r in results]), results)

    def sample(self, prompts: list[Prompt], spec: SamplingSpec) -> Rollout:
        """Generate, then score (dynamic sampling's refills and evaluation)."""
        with self.timer("generate"):
            samples = self.rollout.generate(prompts, spec)
        with self.timer("reward"):
            return self.score(prompts, samples)

    def dynamic_sampling(self, rollout: Rollout, spec: SamplingSpec) -> Rollout:
        """Keep groups whose rewards vary (std > eps), refilling from the sampler up to max_refill_rounds;
        groups with no signal fill any remaining slots (their advantages are 0)."""
        a, G = self.cfg.algorithm, self.cfg.rollout.samples_per_prompt
        P = len(rollout.prompts)
        kept, flat = [], []
        current = rollout
        for round_ in range(a.max_refill_rounds + 1):
            stds = current.rewards.view(-1, G).std(-1)
            for i in range(len(current.prompts)):
                (kept if stds[i] > a.dynamic_sampling_reward_std_eps else flat).append((current, i))
            if len(kept) >= P or round_ == a.max_refill_rounds:
                break
            refill_spec = dataclasses.replace(
                spec, seed=None if spec.seed is None else spec.seed + round_ + 1
            )
            current = self.sample(self.sampler.next_batch(P - len(kept)), refill_spec)
        chosen = (kept + flat)[:P]
        return Rollout(
            [r.prompts[i] for r, i in chosen], [r.samples[i] for r, i in chosen],
            torch.cat([r.rewards.view(-1, G)[i] for r, i in chosen]),
            [o for r, i in chosen for o in r.outcomes[i * G : (i + 1) * G]],
        )  # fmt: skip

    def _learner_batch(self, rollout: Rollout, adv: torch.Tensor) -> LearnerBatch:
        flat = rollout.flat()
        return build_batch([s.prompt_ids for s in flat], [s.response_ids for s in flat], adv,
                           behaviour_logp=[s.response_logp for s in flat],  # log μ: behaviour_is, mismatch
                           pad_token_id=self.pad_id)  # fmt: skip

    def _require_finite(self, metrics: dict[str, float]) -> bool:
        """Whether the update changed the weights. The learner skips an optimiser update whose loss or gradient
        is non-finite on any rank (weights and optimiser state stay as they were: docs/faults.md); a step whose
        every update was skipped counts towards trainer.max_consecutive_skips, past which the run stops."""
        loss, skipped = metrics["learner/loss"], int(metrics.get("learner/skipped_steps", 0))
        updates = int(metrics["learner/num_updates"])
        if skipped:
            print(f"[grpo-lambda] step {self.step_num + 1}: {skipped} of {updates} optimiser updates skipped "
                  "(non-finite loss or gradient on a learner rank)")  # fmt: skip
        changed = skipped < updates
        self.consecutive_skips = 0 if changed else self.consecutive_skips + 1
        limit = self.cfg.trainer.max_consecutive_skips
        if self.consecutive_skips > limit or (changed and not math.isfinite(loss)):
            n = self.consecutive_skips
            why = "" if changed else (f", non-finite loss or gradient in {n} step{'s' * (n > 1)} in a row "
                                      f"(every update skipped; trainer.max_consecutive_skips={limit})")  # fmt: skip
            raise FloatingPointError(
                f"step {self.step_num + 1}: learner loss is {loss}{why}; stopping before the bad weights reach the "
                "engines (the last checkpoint is intact: lower learner.lr or check the data)"
            )
        return changed

    # -------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg.trainer
        try:
            if cfg.eval_before_train and self.step_num == 0:
                self.tracker.log(0, self.evaluate())
            bar = tqdm(total=cfg.total_steps, initial=self.step_num, desc="train", unit="step", leave=False,
                       dynamic_ncols=True)  # fmt: skip
            while self.step_num < cfg.total_steps:
                metrics = self.step()
                if cfg.eval_every_steps and self.step_num % cfg.eval_every_steps == 0:
                    metrics.update(self.evaluate())
                bar.update(1)
                if self.checkpoint_failures:
                    metrics["checkpoint/failed_total"] = float(self.checkpoint_failures)
                self.tracker.log(self.step_num, metrics)
                last = self.step_num == cfg.total_steps
                if (cfg.save_every_steps and self.step_num % cfg.save_every_steps == 0) or last:
                    self.save()
            bar.close()
            summary = self.tracker.finish()
        except LearnerFailure as err:  # a learner rank died: this run cannot go on, a resumed one can
            raise LearnerFailure(f"{err}. {self._resume_hint()}", err.ranks) from err
        finally:
            self.shutdown()
        if cfg.export_final:  # after shutdown: the learners' and engines' memory is free again
            self.export_final()
        return summary

    def _resume_hint(self) -> str:
        """Where a rerun with trainer.resume=auto would continue from."""
        try:
            folder = checkpoint.find_resume(self.cfg.run_dir, "auto")
        except FileNotFoundError as err:
            return f"The latest checkpoint is unusable ({err})"
        if folder is None:
            return f"No checkpoint was written yet in {self.cfg.run_dir}: a rerun starts from step 0"
        return f"Last good checkpoint: {folder}; run again with trainer.resume=auto to continue from it"

    def export_final(self):
        """The latest checkpoint as a Hugging Face folder at <run>/final/ (replacing an earlier one atomically)."""
        from grpo_lambda.export import export_policy

        folder = checkpoint.find_resume(self.cfg.run_dir, "auto")
        if folder is None:
            print(f"[grpo-lambda] no checkpoint in {self.cfg.run_dir}: nothing to export")
            return None
        return export_policy(folder, self.cfg.run_dir / "final", force=True)  # prints where it went

    def evaluate(self) -> dict[str, float]:
        """avg@k, pass@j and maj@k on each eval set, by the code `python -m grpo_lambda.evaluate` runs
        (eval/runner.py, eval/report.py): `eval/<dataset>/avg@k` ..."""
        t0, k = time.perf_counter(), self.cfg.eval.samples_per_prompt
        spec = eval_spec(self.cfg, step_seed(self.cfg.trainer.seed, self.step_num, "eval"))
        evaluator = Evaluator(self.rollout, self.verifier, self.cfg.reward, self.answer_format)
        records = [r for prompts in self.eval_sets.values() for r in evaluator.sample(prompts, spec)]
        out = report.flat_metrics(report.summarize(records, evaluator.majority(records), k))
        out["eval/time_s"] = time.perf_counter() - t0  # outside the step: not a time/ phase
        return out

    # -------------------------------------------------------------------------------------- state
    def save(self) -> None:
        """Checkpoint this step (checkpoint.py). One that cannot be written (read-only folder, full disk) is removed
        again, the last good one left as it was; then the run stops (CheckpointError) or, with
        trainer.on_checkpoint_error=warn, warns, counts it (checkpoint/failed_total) and goes on. docs/faults.md"""
        run_dir, step = self.cfg.run_dir, self.step_num
        try:
            folder = checkpoint.begin(run_dir, step)  # replaces a half-written folder a killed run left
            self.learner.save_checkpoint(str(folder / "learner"), "model")
            state = {"step": step, "version": self.weight_sync.version, "sampler": self.sampler.state_dict(),
                     "rng": checkpoint.rng_state(), "in_flight": self.pipeline.state_dict(),
                     "checkpoint_failures": self.checkpoint_failures,
                     "consecutive_skips": self.consecutive_skips}  # fmt: skip
            checkpoint.commit(run_dir, step, state, keep=self.cfg.trainer.keep_checkpoints)
        except Exception as exc:
            error = checkpoint.write_error(exc)
            if error is None:  # not a failure to write files (a dead learner rank ...)
                raise
            cause = (str(error) if isinstance(error, checkpoint.CheckpointWriteError)
                     else checkpoint.write_error_cause(exc, checkpoint.step_dir(run_dir, step)))  # fmt: skip
            checkpoint.discard(run_dir, step)
            message = checkpoint.failure_message(run_dir, step, cause)
            if self.cfg.trainer.on_checkpoint_error == "stop":
                raise checkpoint.CheckpointError(message) from exc
            self.checkpoint_failures += 1
            print(f"[grpo-lambda] WARNING: {message}; going on (trainer.on_checkpoint_error=warn)", file=sys.stderr,
                  flush=True)  # fmt: skip

    def _restore(self, folder) -> None:
        state = checkpoint.load_driver_state(folder)
        self.learner.load_checkpoint(str(folder / "learner"), "model")
        self.sampler.load_state_dict(state["sampler"])
        self.pipeline.load_state_dict(state.get("in_flight", []))
        checkpoint.set_rng_state(state["rng"])
        self.checkpoint_failures = int(state.get("checkpoint_failures", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        # The engines start from the base model: give them the checkpoint's weights, as the version they had.
        self.step_num, self.weight_sync.version = state["step"], state["version"] - 1
        self.weight_sync.push()
        print(f"[grpo-lambda] resumed from {folder} at step {self.step_num}")

    def shutdown(self) -> None:
        for name in ("learner", "verifier", "rollout"):
            part = getattr(self, name, None)
            if part is not None:
                part.shutdown()
        if getattr(self, "placement", None):
            release(self.placement)
            self.placement = None

    # -------------------------------------------------------------------------------------- helpers
    def _step_spec(self, step: int, salt: str = "rollout") -> SamplingSpec:
        """The sampling settings of step `step`'s batch: a resumed run draws the same seed."""
        return self._spec(step_seed(self.cfg.trainer.seed, step, salt))

    def _spec(self, seed: int) -> SamplingSpec:
        r = self.cfg.rollout
        return SamplingSpec(n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_tokens=self.cfg.model.max_response_tokens, seed=seed)  # fmt: skip

    def _pipeline_metrics(self, generated: Batch, rollout: Rollout, version: int) -> dict[str, float]:
        """Staleness (learner version at the update − the samples' version, per group), the engines' generation
        and idle seconds, and throughput."""
        ages = staleness(rollout.samples, version)
        tokens = sum(len(s.response_ids) for group in generated.samples for s in group)
        gen_s = generated.timing["generate_s"]
        return {
            "rollout/staleness_mean": sum(ages) / len(ages),
            "rollout/staleness_max": float(max(ages)),
            "rollout/dropped_stale": float(generated.dropped_stale),
            "rollout/generate_s": gen_s,  # the engines' own generation time (overlaps training when async)
            "rollout/tokens_per_s": tokens / gen_s if gen_s > 0 else 0.0,
            "time/engine_idle_s": generated.timing["idle_s"],
        }

    @staticmethod
    def _batch_record(rollout: Rollout) -> dict[str, list]:
        """What a step trained on, for batches.jsonl: prompt ids and each group's weights version."""
        versions = [min(s.weights_version for s in group) for group in rollout.samples]
        return {"prompt_ids": [p.id for p in rollout.prompts], "weights_versions": versions}

    def _credit_metrics(self, batch: LearnerBatch, rollout: Rollout) -> dict[str, float]:
        """`credit/*`: each token's weight in this step's policy gradient (algorithms/credit.py), answer tokens marked."""
        # ε-weight's c needs log π: θ_old's where computed, else the engine's (≈ θ_old)
        logp = batch.old_logp if batch.old_logp is not None else batch.behaviour_logp
        credit = token_credit(batch.response_mask, self.cfg.algorithm, horizon=self.cfg.model.max_response_tokens,
                              logp=logp)  # fmt: skip
        answers = answer_token_mask(
            self.tokenizer, [s.response_ids for s in rollout.flat()], batch.response_len
        )
        return credit_metrics(credit, batch.response_mask, answers)

    def _rollout_metrics(self, rollout: Rollout, adv: torch.Tensor) -> dict[str, float]:
        flat = rollout.flat()
        lengths = torch.tensor([len(s.response_ids) for s in flat], dtype=torch.float32)
        rewards = rollout.rewards
        m = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "reward/group_solved_frac": (rewards.view(-1, self.cfg.rollout.samples_per_prompt) > 0.5).any(-1).float().mean().item(),
            "advantage/abs_mean": adv.abs().mean().item(),
            "response/length_mean": lengths.mean().item(),
            "response/length_max": lengths.max().item(),
            "response/clip_frac": sum(s.finish_reason == "length" for s in flat) / len(flat),
            "rollout/weights_version": float(self.weight_sync.version),
            "rollout/engine_restarts": float(self.rollout.restarts),  # engines replaced so far in this process
        }  # fmt: skip
        m.update(outcome_metrics(rollout.outcomes))
        return m
