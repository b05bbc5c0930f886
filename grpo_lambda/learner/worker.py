"""One learner rank: a DeepSpeed engine around the policy (and an optional frozen reference model).

`LearnerWorker` is a plain class (usable without Ray at world_size 1); `LearnerActor` is its thin Ray face, adding
only what a remote process needs (its node id, rank 0's rendezvous address). `LearnerGroup` drives N of them.

It reads the run's `Config`: `learner` (ZeRO, optimiser, batch sizes), `model` (dtype, LoRA, checkpointing),
`algorithm` (the loss; a reference model only when `kl_coef > 0`), `rollout.temperature` (log-probs are of
logits / τ, as the engine samples) and `trainer.seed`.

One `train_step` takes this rank's shard of a rollout batch: for each mini-batch (one optimiser step), for each
micro-batch (one forward/backward), the GRPO-λ loss share with the mini-batch's global normalisers, then
`engine.backward(loss * world_size, scale_wrt_gas=False)` (see deepspeed_setup.py for why). An update whose loss or
gradient is not finite on any rank is skipped on every rank, weights and optimiser state untouched (docs/faults.md).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from grpo_lambda.algorithms import behaviour_mismatch, grpo_lambda_loss
from grpo_lambda.algorithms.loss_config import BEHAVIOUR_IS_AUTO
from grpo_lambda.compat import deepspeed_records_grad_norm, full_numel
from grpo_lambda.config.schema import Config

from .batch import LearnerBatch, MiniBatchCounts, pad_response_dim, split_batch
from .checkpointing import load_engine_checkpoint, optimizer_checksum, param_checksum, save_engine_checkpoint
from .deepspeed_setup import (
    any_rank,
    backward_scale,
    build_ds_config,
    check_accumulation_boundary,
    default_single_process_env,
    end_unchecked_skip,
    init_distributed,
    initialize_engine,
    initialize_inference_engine,
    reduced_grad_norm,
    select_device,
    set_batch_sizes,
    skip_unchecked_step,
)
from .metrics import StepTally, TokenWeighted
from .model import attention_implementation, load_causal_lm, response_logp
from .token_budget import Plan
from .weights import full_named_tensors, tied_lm_head

CLIENT_STATE_KEY = "grpo_lambda_learner"


class LearnerWorker:
    """The work of one learner rank (plain class; see module docstring)."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self.engine = None
        self.ref = None
        self.cfg: Config | None = None
        self.num_updates = 0  # optimiser updates applied
        self.num_skipped = 0  # optimiser updates skipped (non-finite loss or gradient on some rank)
        self._hf_ds_config = (
            None  # keeps transformers' ZeRO-3 hook alive (HfDeepSpeedConfig is held by weakref)
        )
        self._sync = None  # the weight-sync sender (rank 0), see init_weight_sync

    # ----------------------------------------------------------------------------------------------- set-up
    def init(self, model_path: str, cfg: Config, *, env: dict[str, str] | None = None) -> dict:
        """Join the process group, load the policy into a DeepSpeed engine and, when `cfg.algorithm.kl_coef > 0`,
        the frozen reference model (otherwise it is never loaded). Returns a short description."""
        t0 = time.perf_counter()
        if env:
            os.environ.update(env)
        default_single_process_env(self.world_size)
        self.device = select_device()
        from grpo_lambda.distributed.rendezvous import default_backend

        learner, model_cfg = cfg.learner, cfg.model
        if cfg.algorithm.behaviour_is == BEHAVIOUR_IS_AUTO:
            raise ValueError(
                "algorithm.behaviour_is='auto' is resolved where the run lands (the Trainer calls "
                "grpo_lambda.config.resolve.resolve_runtime before the learner starts); a learner used on its own "
                "needs an explicit none | tis | mis | seq_filter"
            )
        init_distributed(default_backend(self.device.type) if learner.backend == "auto" else learner.backend)
        self.cfg = cfg
        torch.manual_seed(cfg.trainer.seed)
        if learner.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            # from_pretrained then builds the model under deepspeed.zero.Init: partitioned as it loads.
            self._hf_ds_config = HfDeepSpeedConfig(build_ds_config(learner, model_cfg.dtype, self.world_size))
        attn = attention_implementation(model_cfg.attn_implementation, self.device.type == "cuda",
                                        model_cfg.max_prompt_tokens + model_cfg.max_response_tokens)  # fmt: skip
        model = load_causal_lm(model_path, dtype=model_cfg.dtype, gradient_checkpointing=model_cfg.gradient_checkpointing,
                               lora=model_cfg.lora, attn_implementation=attn)  # fmt: skip
        self.engine = initialize_engine(model, learner, model_cfg.dtype, self.world_size)
        reference = cfg.algorithm.kl_coef > 0
        if reference:
            ref = load_causal_lm(model_path, dtype=model_cfg.dtype, trainable=False, attn_implementation=attn)
            if learner.zero_stage == 3:
                self.ref = initialize_inference_engine(ref, learner, model_cfg.dtype, self.world_size)
            else:
                self.ref = ref.to(self.device)
        return {
            "rank": self.rank,
            "device": str(self.device),
            "trainable_params": sum(full_numel(p) for p in self._trainable()),
            "reference": reference,
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "init_s": time.perf_counter() - t0,
        }

    def _require_init(self) -> None:
        if self.engine is None:
            raise RuntimeError("LearnerWorker.init(model_path, cfg) must be called first")

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    # -------------------------------------------------------------------------------------------- log-probs
    @torch.no_grad()
    def compute_logp(
        self, batch: LearnerBatch, *, reference: bool = False, plan: Plan | None = None
    ) -> Tensor:
        """log-probs [B, T] (fp32, CPU) of the response tokens under the current policy (θ_old when called before
        train_step) or, with reference=True, under the frozen reference model. Runs in micro-batches: the rows of
        each `plan` entry (token_budget.py), or learner.logp_micro_batch_samples rows at a time. All ranks must make
        the same number of forwards (ZeRO-3 forwards are collective)."""
        self._require_init()
        if reference and self.ref is None:
            raise RuntimeError(
                "compute_logp(reference=True): no reference model was loaded (algorithm.kl_coef=0)"
            )
        model = self.ref if reference else self.engine
        if not reference:
            self.engine.eval()
        step = self.cfg.learner.logp_micro
        plan = (
            plan
            if plan is not None
            else [list(range(i, min(i + step, len(batch)))) for i in range(0, len(batch), step)]
        )
        out = torch.zeros(len(batch), batch.response_len, dtype=torch.float32)
        for rows in plan:
            mb = batch.select(rows).compact().to(self.device)
            logp, _ = response_logp(model, mb, temperature=self.cfg.rollout.temperature,
                                    packed=self.cfg.learner.pack_groups)  # fmt: skip
            out[rows] = pad_response_dim(logp.float().cpu(), batch.response_len)
        return out

    # --------------------------------------------------------------------------------------------- training
    def train_step(
        self,
        shard: LearnerBatch,
        *,
        mini_batch_samples: int,
        micro_batch_samples: int,
        counts: Sequence[MiniBatchCounts],
        micro_plans: Sequence[Plan] | None = None,
    ) -> dict[str, float]:
        """One optimiser step per mini-batch of this rank's shard (see batch.shard_for_data_parallel), repeated
        for learner.epochs_per_batch passes, with the loss `cfg.algorithm`.

        mini_batch_samples: samples per optimiser step over all ranks; micro_batch_samples: per forward on one
        rank; counts: the global normalisers of each mini-batch (batch.mini_batch_counts, on the driver);
        micro_plans: per mini-batch, the rows of each micro-batch (token_budget.py; the same count on every rank):
        replaces micro_batch_samples, and the accumulation boundary is then set explicitly.
        shard.old_logp may be None only with a single update (θ_old = θ, so old_logp = logp.detach()).
        Returns this rank's metrics; combine ranks with metrics.reduce_rank_metrics.
        """
        self._require_init()
        t0 = time.perf_counter()
        epochs = self.cfg.learner.epochs_per_batch
        minis = split_batch(
            shard, mini_batch_samples // self.world_size, what="mini_batch_samples / world_size"
        )
        self._check_step_inputs(shard, minis, counts, micro_plans)
        if micro_plans is None:
            set_batch_sizes(self.engine, mini_batch_samples, micro_batch_samples)
        lr = self.engine.get_lr()[0]  # the LR of this step's first update
        self.engine.train()
        tally = StepTally()
        for update_index, m in enumerate(m for _ in range(epochs) for m in range(len(minis))):
            if micro_plans is None:
                micros = split_batch(minis[m], micro_batch_samples)
            else:
                micros = [minis[m].select(rows) for rows in micro_plans[m]]
            update, update_loss = TokenWeighted(), 0.0  # this update's, kept only if it is applied
            for i, mb in enumerate(micros):
                update_loss, metrics, manual_norm = self._micro_step(
                    mb, counts[m], (i, len(micros)), update_loss, tally,
                    explicit=micro_plans is not None, diagnose=update_index == 0,
                )  # fmt: skip
                update.add(metrics, float(metrics.pop("learner/num_tokens")))
            tally.end_update(self.engine, update, update_loss, manual_norm)
        if micro_plans is not None:
            self.engine.set_gradient_accumulation_boundary(None)  # back to DeepSpeed's own micro-step counter
        self.num_updates += tally.applied
        self.num_skipped += tally.skipped
        return tally.metrics(update, epochs, lr, self.num_updates, self.num_skipped) | {
            "learner/update_s": time.perf_counter() - t0
        }

    def _check_step_inputs(self, shard, minis, counts, micro_plans) -> None:
        epochs = self.cfg.learner.epochs_per_batch
        if len(counts) != len(minis):
            raise ValueError(f"got {len(counts)} MiniBatchCounts for {len(minis)} mini-batches")
        if shard.old_logp is None and len(minis) * epochs > 1:
            raise ValueError(
                f"{len(minis)} mini-batches x {epochs} epochs need old_logp from before the first update: compute "
                "it with compute_logp(batch) first"
            )
        if self.cfg.algorithm.kl_coef > 0 and shard.ref_logp is None:
            raise ValueError(
                "kl_coef > 0 needs ref_logp: compute_logp(batch, reference=True) before train_step"
            )
        if micro_plans is not None and len(micro_plans) != len(minis):
            raise ValueError(f"got {len(micro_plans)} micro-batch plans for {len(minis)} mini-batches")

    def _micro_step(
        self, mb, count, position, update_loss, tally, *, explicit: bool, diagnose: bool
    ) -> tuple[float, dict, float | None]:
        """Forward and backward of micro-batch i of n (`position`) of one update, then `engine.step()`, which
        applies the update at the accumulation boundary (the last micro-batch; `explicit`: variable micro-batch
        sizes, the boundary is ours to say). Returns the update's loss so far, this micro-batch's loss metrics and
        the gradient norm `_step` measured (None where DeepSpeed keeps it)."""
        i, n = position
        last = i == n - 1
        if explicit:
            self.engine.set_gradient_accumulation_boundary(last)
        else:
            check_accumulation_boundary(self.engine, i, n)
        mb = mb.compact().to(self.device)
        tally.count_positions(mb, self.cfg.learner.pack_groups)
        loss, metrics, logp = self._loss(mb, count)
        if diagnose and mb.behaviour_logp is not None:  # engine vs learner at θ = θ_old, first update only
            diag = behaviour_mismatch(logp, mb.behaviour_logp, mb.response_mask)
            tally.mismatch.add(diag, float(mb.response_mask.sum()))
        update_loss += float(loss.detach())
        if last and not math.isfinite(update_loss):
            # A non-finite loss on this rank must not be applied even if its gradients came out finite: make them
            # NaN. The gradient reduction carries them to every rank, whose DeepSpeed optimiser then finds the
            # global norm non-finite and skips the step (all ranks alike).
            loss = loss * float("nan")
        # The loss is this micro-batch's exact share: undo DeepSpeed's 1/GAS and its average over ranks.
        self.engine.backward(loss * backward_scale(self.world_size), scale_wrt_gas=False)
        return update_loss, metrics, self._step(last)

    def _step(self, last: bool) -> float | None:
        """`engine.step()`. At the boundary on ZeRO-0 fp32 (a plain torch optimiser, which DeepSpeed does not
        check) the norm of the all-reduced gradients is measured first and a non-finite one on any rank skips the
        update on every rank; returns that norm, else None."""
        manual_norm = None
        if last and not deepspeed_records_grad_norm(self.engine.optimizer):
            manual_norm = reduced_grad_norm(self._trainable())  # measured before step() clears the gradients
            if any_rank(not math.isfinite(manual_norm), self.device, self.world_size):
                skip_unchecked_step(self.engine)
        try:
            self.engine.step()
        finally:
            if manual_norm is not None:
                end_unchecked_skip(self.engine)
        return manual_norm

    def _loss(self, mb: LearnerBatch, count: MiniBatchCounts) -> tuple[Tensor, dict, Tensor]:
        """This micro-batch's share of its mini-batch's loss (forward pass), the loss metrics and log π_θ."""
        loss_cfg = self.cfg.algorithm
        entropy_mode = "grad" if loss_cfg.entropy_coef != 0 else "metric"
        logp, entropy = response_logp(self.engine, mb, temperature=self.cfg.rollout.temperature,
                                      entropy=entropy_mode, packed=self.cfg.learner.pack_groups)  # fmt: skip
        old_logp = mb.old_logp if mb.old_logp is not None else logp.detach()
        loss, metrics = grpo_lambda_loss(
            logp,
            old_logp,
            mb.advantages,
            mb.response_mask,
            loss_cfg,
            ref_logp=mb.ref_logp if loss_cfg.kl_coef > 0 else None,
            entropy=entropy,
            num_tokens=count.num_tokens,
            num_seqs=count.num_seqs,
            horizon=self.cfg.model.max_response_tokens,  # one H for every (compacted) micro-batch
            behaviour_logp=mb.behaviour_logp,  # used only with algorithm.behaviour_is != none
        )
        return loss, metrics, logp

    # ------------------------------------------------------------------------------------------- weights out
    def gather_state_dict(self) -> dict[str, Tensor] | None:
        """Full HF-named weights (engine dtype, CPU) on rank 0, None elsewhere. All ranks must call it (ZeRO-3).

        Tied embeddings: `lm_head.weight` is included explicitly (inference engines keep their own lm_head)."""
        self._require_init()
        out = dict(full_named_tensors(self.engine.module, on_this_rank=self.rank == 0))
        if self.rank != 0:
            return None
        embedding = tied_lm_head(self.engine.module)
        if embedding is not None and "lm_head.weight" not in out:
            out["lm_head.weight"] = embedding.detach().cpu().clone()
        return out

    def init_weight_sync(self, host: str, port: int, world_size: int, **sender_kwargs) -> None:
        """Rank 0 only: join the weight-sync group as its rank 0 (the engines join as ranks 1.. at the same time);
        `sender_kwargs` go to distributed.sync_protocol.WeightSender (backend, timeout_s, dtype, bucket_bytes)."""
        from grpo_lambda.distributed.sync_protocol import WeightSender

        if self.rank != 0:
            raise RuntimeError("only learner rank 0 sends weights")
        self.close_weight_sync()
        self._sync = WeightSender(host, port, world_size, **sender_kwargs)

    def close_weight_sync(self) -> None:
        """Leave the weight-sync group (rank 0; a no-op elsewhere): its connections close, so engines still
        waiting on a broadcast fail at once instead of at the group's timeout (engine replacement, docs/faults.md)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def broadcast_weights(self, version: int) -> dict[str, int]:
        """Every rank (ZeRO-3 gathers are collective): rank 0 streams its full weights to the engines, one bucket
        at a time; returns what it sent (empty on other ranks)."""
        self._require_init()
        if self.rank != 0:
            for _ in full_named_tensors(self.engine.module, on_this_rank=False, unique=True):
                pass
            return {}
        if self._sync is None:
            raise RuntimeError("broadcast_weights before init_weight_sync")
        tensors = full_named_tensors(
            self.engine.module, on_this_rank=True, unique=True, device=self._sync.device
        )
        return self._sync.send(tensors, version).as_dict()

    def param_checksum(self) -> str:
        """sha256 over every full parameter (checkpointing.param_checksum); equal on all ranks iff they agree."""
        self._require_init()
        return param_checksum(self.engine)

    def optimizer_checksum(self) -> str:
        """sha256 of this rank's optimiser state and LR schedule (checkpointing.optimizer_checksum)."""
        self._require_init()
        return optimizer_checksum(self.engine)

    # ------------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict | None = None) -> str:
        """DeepSpeed engine checkpoint (model, optimiser, LR schedule) at ckpt_dir/tag, written atomically by every
        rank together (learner/checkpointing.py: a write failure on any rank raises CheckpointWriteError on all)."""
        self._require_init()
        state = dict(client_state or {})
        state[CLIENT_STATE_KEY] = {"num_updates": self.num_updates, "num_skipped": self.num_skipped}
        return save_engine_checkpoint(self.engine, self.rank, self.world_size, ckpt_dir, tag, state)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> dict:
        """Restore model, optimiser and LR schedule from ckpt_dir/tag (tag None: the one named in `latest`).
        Returns the client_state passed to save_checkpoint."""
        self._require_init()
        client_state = load_engine_checkpoint(self.engine, ckpt_dir, tag)
        ours = client_state.pop(CLIENT_STATE_KEY, {})
        self.num_updates, self.num_skipped = int(ours.get("num_updates", 0)), int(ours.get("num_skipped", 0))
        return client_state


class LearnerActor(LearnerWorker):
    """Ray face of LearnerWorker: where it runs and rank 0's rendezvous address; all work is inherited."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def process_info(self) -> dict:
        """This rank's process id and node address (named when the rank dies: LearnerFailure)."""
        import ray

        return {"pid": os.getpid(), "ip": ray.util.get_node_ip_address()}

    def master_address(self, single_node: bool) -> tuple[str, int]:
        from grpo_lambda.distributed.rendezvous import master_address

        return master_address(single_node)
