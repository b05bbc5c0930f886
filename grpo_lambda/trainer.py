"""The GRPO-λ training loop (DESIGN.md, "one step"): prompts → rollout → rewards → advantages → learn → sync → log.

    trainer = Trainer(cfg); summary = trainer.run()

What it starts (Ray, placement groups, rollout workers, the weight-sync group) is built in `launch.py`;
`Trainer.step` reads top to bottom like the design's data flow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from grpo_lambda import checkpoint
from grpo_lambda.algorithms import LossConfig, compute_advantages
from grpo_lambda.config import Config
from grpo_lambda.data.datasets import build_eval_rows, build_train_rows
from grpo_lambda.data.sampler import PromptSampler
from grpo_lambda.data.templates import Prompt, PromptFormatter
from grpo_lambda.eval import summarize_correctness
from grpo_lambda.launch import (
    build_rollout_workers,
    get_fail_fast,
    init_broadcast_sync,
    init_ray,
    place,
    resolve_weight_sync,
)
from grpo_lambda.learner.batch import build_batch
from grpo_lambda.learner.config import LearnerConfig
from grpo_lambda.learner.group import LearnerGroup
from grpo_lambda.models import resolve_model
from grpo_lambda.rewards import VerifierPool, VerifyRequest, outcome_metrics
from grpo_lambda.rollout.engine import Sample, SamplingSpec
from grpo_lambda.tracking import Tracker
from grpo_lambda.utils import Timer, set_seed


# ------------------------------------------------------------------------------------------ building blocks
def loss_config(cfg: Config) -> LossConfig:
    a = cfg.algorithm
    return LossConfig(policy_loss=a.policy_loss, clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
                      dual_clip_c=a.dual_clip_c, gamma=a.gamma, lam=a.lam, trace_style=a.trace_style,
                      trace_anchor=a.trace_anchor, trace_floor=a.trace_floor, kl_estimator=a.kl_estimator,
                      kl_coef=a.kl_coef, entropy_coef=a.entropy_coef, loss_agg=a.loss_agg)  # fmt: skip


def step_seed(seed: int, step: int, salt: str = "rollout") -> int:
    """A sampling seed for (run seed, step): the same on a resumed run as on an uninterrupted one."""
    return (
        int.from_bytes(hashlib.sha256(f"{seed}:{step}:{salt}".encode()).digest()[:4], "little") & 0x7FFFFFFF
    )


@dataclass
class Rollout:
    """One step's groups: prompts[i] has samples[i] (G of them) with rewards and outcomes, prompt-major."""

    prompts: list[Prompt]
    samples: list[list[Sample]]
    rewards: torch.Tensor  # [P*G]
    outcomes: list


# ------------------------------------------------------------------------------------------ the trainer
class Trainer:
    def __init__(self, cfg: Config):
        import ray
        from transformers import AutoTokenizer

        self.cfg, self.loss_cfg, self.timer = cfg, loss_config(cfg), Timer()
        set_seed(cfg.trainer.seed)
        self.model_path = str(resolve_model(cfg.model.path))
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_path or self.model_path)
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        )
        self.formatter = PromptFormatter(tokenizer, cfg.data.prompt_template, cfg.model.use_chat_template,
                                         cfg.model.max_prompt_tokens)  # fmt: skip
        prompts, dropped = self.formatter.format_rows(build_train_rows(cfg))
        if dropped:
            print(f"[grpo-lambda] dropped {len(dropped)} prompts longer than model.max_prompt_tokens")
        self.sampler = PromptSampler(prompts, cfg.data.prompts_per_step, cfg.data.seed, cfg.data.shuffle)
        self.eval_sets = {
            name: self.formatter.format_rows(rows)[0] for name, rows in build_eval_rows(cfg).items()
        }

        init_ray(cfg)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.verifier = VerifierPool(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s,
                                     use_ray=True, num_cpus_per_worker=0.5)  # fmt: skip
        self.placement = place(cfg, gpus)
        self.workers = build_rollout_workers(cfg, self.model_path, self.placement["rollout"], gpus)
        self.learner = LearnerGroup(cfg.learner.world_size, self.model_path, LearnerConfig.from_run_config(cfg),
                                    reference=self.loss_cfg.kl_coef > 0, placement=self.placement["learner"],
                                    backend=None if cfg.learner.backend == "auto" else cfg.learner.backend,
                                    extra_env=cfg.cluster.env_vars)  # fmt: skip
        self.weight_sync, sync_backend = resolve_weight_sync(cfg, gpus)
        if self.weight_sync == "broadcast":
            init_broadcast_sync(cfg, self.learner, self.workers, sync_backend)
        self.step_num, self.version = 0, 0
        resume_from = checkpoint.find_resume(cfg.run_dir, cfg.trainer.resume)
        if resume_from is not None:
            self._restore(resume_from)
        self.tracker = Tracker.from_config(cfg, start_step=self.step_num)

    # -------------------------------------------------------------------------------------- one step
    def step(self) -> dict[str, float]:
        cfg, timer = self.cfg, self.timer
        timer.reset()
        t0 = time.perf_counter()
        spec = self._spec(step_seed(cfg.trainer.seed, self.step_num))
        rollout = self.dynamic_sampling(self.rollout(self.sampler.next_batch(), spec), spec)  # timed inside
        a = cfg.algorithm
        adv = compute_advantages(rollout.rewards, cfg.rollout.samples_per_prompt, estimator=a.adv_estimator,
                                 eps=a.adv_eps, neg_clamp=a.neg_adv_clamp)  # fmt: skip
        flat = [s for group in rollout.samples for s in group]
        batch = build_batch(
            [s.prompt_ids for s in flat],
            [s.response_ids for s in flat],
            adv,
            behaviour_logp=[s.response_logp for s in flat],  # for the engine-vs-learner diagnostic only
            pad_token_id=self.pad_id,
        )
        with timer("learn"):
            self._call_workers("sleep")  # frees the GPU for a colocated learner; a no-op on CPU
            metrics = self.learner.train_step(batch, self.loss_cfg)
        if not math.isfinite(metrics["learner/loss"]):
            raise FloatingPointError(
                f"step {self.step_num + 1}: learner loss is {metrics['learner/loss']}; stopping before the bad "
                "weights reach the engines (the last checkpoint is intact: lower learner.lr or check the data)"
            )
        with timer("sync"):
            self._call_workers("wake_up")
            self.sync_weights()
        metrics.update(self._rollout_metrics(rollout, flat, adv))
        metrics.update(timer.metrics())
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics["time/other_s"] = metrics["time/step_s"] - sum(timer.durations.values())
        self.step_num += 1
        return metrics

    def rollout(self, prompts: list[Prompt], spec: SamplingSpec) -> Rollout:
        """Generate G samples per prompt across the workers, then grade them in the verifier pool."""
        import ray

        with self.timer("generate"):
            shards = [prompts[i :: len(self.workers)] for i in range(len(self.workers))]
            refs = [
                w.generate.remote([p.token_ids for p in s], spec) for w, s in zip(self.workers, shards) if s
            ]
            outs = ray.get(refs)
            by_prompt: dict[int, list[Sample]] = {}
            for w, out in enumerate(outs):
                for j, group in enumerate(out):
                    by_prompt[w + j * len(self.workers)] = group
            samples = [by_prompt[i] for i in range(len(prompts))]
        with self.timer("reward"):
            rw = self.cfg.reward
            requests = [VerifyRequest(response=s.text, answer=p.answer, verifier=p.verifier, correct=rw.correct,
                                      wrong=rw.wrong, format_weight=rw.format_weight)
                        for p, group in zip(prompts, samples) for s in group]  # fmt: skip
            results = self.verifier.score(requests)
        return Rollout(prompts, samples, torch.tensor([r.reward for r in results]), results)

    def dynamic_sampling(self, rollout: Rollout, spec: SamplingSpec) -> Rollout:
        """Keep groups whose rewards vary (std > eps), refilling from the sampler up to max_refill_rounds;
        groups with no signal fill any remaining slots (their advantages are 0)."""
        a, G = self.cfg.algorithm, self.cfg.rollout.samples_per_prompt
        if not a.dynamic_sampling:
            return rollout
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
            current = self.rollout(self.sampler.next_batch(P - len(kept)), refill_spec)
        chosen = (kept + flat)[:P]
        return Rollout(
            [r.prompts[i] for r, i in chosen], [r.samples[i] for r, i in chosen],
            torch.cat([r.rewards.view(-1, G)[i] for r, i in chosen]),
            [o for r, i in chosen for o in r.outcomes[i * G : (i + 1) * G]],
        )  # fmt: skip

    def sync_weights(self) -> None:
        """Push the learner's weights to every engine (versioned; timed out rather than hung; optional check)."""
        import ray

        self.version += 1
        timeout = self.cfg.rollout.sync_timeout_s
        try:
            if self.weight_sync == "broadcast":
                sending = self.learner.broadcast_weights_async(self.version)
                receiving = [w.receive_weights.remote(self.version) for w in self.workers]
                results = get_fail_fast(
                    sending + receiving, timeout
                )  # a failed side must not wait out the other
                sent, received = results[0], results[len(sending) :]
                for i, got in enumerate(received):
                    if got != sent:
                        raise RuntimeError(f"weight sync: engine {i} received {got}, the learner sent {sent}")
            else:
                weights = self.learner.state_dict_for_sync()
                ray.get([w.load_weights.remote(weights, self.version) for w in self.workers], timeout=timeout)
            if self.cfg.rollout.sync_check:
                weights = self.learner.state_dict_for_sync()
                bad = ray.get([w.verify_weights.remote(weights) for w in self.workers], timeout=timeout)
                if any(bad):
                    raise RuntimeError(f"weight sync check failed: engines differ from the learner in {bad}")
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"weight sync to the rollout engines took longer than rollout.sync_timeout_s={timeout}"
            ) from None

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
                self.tracker.log(self.step_num, metrics)
                last = self.step_num == cfg.total_steps
                if (cfg.save_every_steps and self.step_num % cfg.save_every_steps == 0) or last:
                    self.save()
            bar.close()
            return self.tracker.finish()
        finally:
            self.shutdown()

    def evaluate(self) -> dict[str, float]:
        """avg@k and pass@k on each eval set with the eval sampling settings."""
        e, out = self.cfg.eval, {}
        spec = SamplingSpec(n=e.samples_per_prompt, temperature=e.temperature, top_p=e.top_p,
                            max_tokens=e.max_response_tokens or self.cfg.model.max_response_tokens,
                            seed=step_seed(self.cfg.trainer.seed, self.step_num, "eval"))  # fmt: skip
        for name, prompts in self.eval_sets.items():
            r = self.rollout(prompts, spec)
            correct = [[o.outcome == "correct" for o in r.outcomes[i * spec.n : (i + 1) * spec.n]]
                       for i in range(len(prompts))]  # fmt: skip
            ks = sorted({1, spec.n})
            out.update({f"eval/{name}/{k}": v for k, v in summarize_correctness(correct, ks).items()})
        return out

    # -------------------------------------------------------------------------------------- state
    def save(self) -> None:
        folder = checkpoint.step_dir(self.cfg.run_dir, self.step_num)
        self.learner.save_checkpoint(str(folder / "learner"), "model")
        state = {"step": self.step_num, "version": self.version, "sampler": self.sampler.state_dict(),
                 "rng": checkpoint.rng_state()}  # fmt: skip
        checkpoint.commit(self.cfg.run_dir, self.step_num, state, keep=self.cfg.trainer.keep_checkpoints)

    def _restore(self, folder) -> None:
        state = checkpoint.load_driver_state(folder)
        self.learner.load_checkpoint(str(folder / "learner"), "model")
        self.sampler.load_state_dict(state["sampler"])
        checkpoint.set_rng_state(state["rng"])
        self.step_num, self.version = state["step"], state["version"]
        self.sync_weights()  # the engines start from the base model: give them the checkpoint's weights first
        print(f"[grpo-lambda] resumed from {folder} at step {self.step_num}")

    def shutdown(self) -> None:
        import ray

        for name in ("learner", "verifier"):
            part = getattr(self, name, None)
            if part is not None:
                part.shutdown()
        for w in getattr(self, "workers", []):
            ray.kill(w)
        if getattr(self, "placement", None):
            from ray.util.placement_group import remove_placement_group

            for pg in {id(p.placement_group): p.placement_group for p in self.placement.values()}.values():
                remove_placement_group(pg)

    # -------------------------------------------------------------------------------------- helpers
    def _call_workers(self, method: str) -> None:
        import ray

        ray.get([getattr(w, method).remote() for w in self.workers])

    def _spec(self, seed: int) -> SamplingSpec:
        r = self.cfg.rollout
        return SamplingSpec(n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_tokens=self.cfg.model.max_response_tokens, seed=seed)  # fmt: skip

    def _rollout_metrics(self, rollout: Rollout, flat: list[Sample], adv: torch.Tensor) -> dict[str, float]:
        lengths = torch.tensor([len(s.response_ids) for s in flat], dtype=torch.float32)
        rewards = rollout.rewards
        gen_s = self.timer.durations.get("generate", 0.0)
        m = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "reward/group_solved_frac": (rewards.view(-1, self.cfg.rollout.samples_per_prompt) > 0.5).any(-1).float().mean().item(),
            "advantage/abs_mean": adv.abs().mean().item(),
            "response/length_mean": lengths.mean().item(),
            "response/length_max": lengths.max().item(),
            "response/clip_frac": sum(s.finish_reason == "length" for s in flat) / len(flat),
            "rollout/tokens_per_s": lengths.sum().item() / gen_s if gen_s > 0 else 0.0,
            "rollout/weights_version": float(self.version),
        }  # fmt: skip
        m.update(outcome_metrics(rollout.outcomes))
        return m
