"""One learner rank: a DeepSpeed engine around the policy (and an optional frozen reference model).

`LearnerWorker` is a plain class (usable without Ray at world_size 1); `LearnerActor` is its thin Ray face, adding
only what a remote process needs (its node id, rank 0's rendezvous address). `LearnerGroup` drives N of them.

It reads the run's `Config`: `learner` (ZeRO, optimiser, batch sizes), `model` (dtype, LoRA, checkpointing),
`algorithm` (the loss; a reference model only when `kl_coef > 0`), `rollout.temperature` (log-probs are of
logits / τ, as the engine samples) and `trainer.seed`.

One `train_step` takes this rank's shard of a rollout batch: for each mini-batch (one optimiser step), for each
micro-batch (one forward/backward), the GRPO-λ loss share with the mini-batch's global normalisers, then
`engine.backward(loss * world_size, scale_wrt_gas=False)` (see deepspeed_setup.py for why).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from grpo_lambda.algorithms import behaviour_mismatch, grpo_lambda_loss
from grpo_lambda.compat import deepspeed_records_grad_norm, full_numel
from grpo_lambda.config.schema import Config

from .batch import LearnerBatch, MiniBatchCounts, pad_response_dim, split_batch
from .deepspeed_setup import (
    backward_scale,
    build_ds_config,
    check_accumulation_boundary,
    init_distributed,
    initialize_engine,
    initialize_inference_engine,
    set_batch_sizes,
)
from .metrics import TokenWeighted
from .model import attention_implementation, load_causal_lm, response_logp
from .packing import packed_positions
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
        self.num_updates = 0
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
        self._default_single_process_env()
        self.device = self._select_device()
        from grpo_lambda.distributed.rendezvous import default_backend

        learner, model_cfg = cfg.learner, cfg.model
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

    def _default_single_process_env(self) -> None:
        if self.world_size == 1 and "MASTER_ADDR" not in os.environ:
            from grpo_lambda.distributed.rendezvous import Rendezvous, find_free_port

            os.environ.update(Rendezvous("127.0.0.1", find_free_port(), 1).env(0))

    def _select_device(self) -> torch.device:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # Ray gives each actor its own CUDA_VISIBLE_DEVICES: with one visible device it is cuda:0 whatever the
        # node-local rank, and DeepSpeed picks the device from LOCAL_RANK.
        local = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.device_count() > 1 else 0
        os.environ["LOCAL_RANK"] = str(local)
        torch.cuda.set_device(local)
        return torch.device("cuda", local)

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
        loss_cfg, epochs = self.cfg.algorithm, self.cfg.learner.epochs_per_batch
        packed = self.cfg.learner.pack_groups
        minis = split_batch(
            shard, mini_batch_samples // self.world_size, what="mini_batch_samples / world_size"
        )
        if len(counts) != len(minis):
            raise ValueError(f"got {len(counts)} MiniBatchCounts for {len(minis)} mini-batches")
        if shard.old_logp is None and len(minis) * epochs > 1:
            raise ValueError(
                f"{len(minis)} mini-batches x {epochs} epochs need old_logp from before the first update: compute "
                "it with compute_logp(batch) first"
            )
        if loss_cfg.kl_coef > 0 and shard.ref_logp is None:
            raise ValueError(
                "kl_coef > 0 needs ref_logp: compute_logp(batch, reference=True) before train_step"
            )
        if micro_plans is None:
            set_batch_sizes(self.engine, mini_batch_samples, micro_batch_samples)
        elif len(micro_plans) != len(minis):
            raise ValueError(f"got {len(micro_plans)} micro-batch plans for {len(minis)} mini-batches")
        lr = self.engine.get_lr()[0]  # the LR of this step's first update
        self.engine.train()
        loss_metrics, mismatch = TokenWeighted(), TokenWeighted()  # mismatch: engine vs learner at θ = θ_old
        loss_total = grad_norm_total = 0.0
        positions = real_positions = 0
        for update_index, m in enumerate(m for _ in range(epochs) for m in range(len(minis))):
            mini, count = minis[m], counts[m]
            if micro_plans is None:
                micros = split_batch(mini, micro_batch_samples)
            else:
                micros = [mini.select(rows) for rows in micro_plans[m]]
            manual_norm = None
            for i, mb in enumerate(micros):
                last = i == len(micros) - 1
                if micro_plans is None:
                    check_accumulation_boundary(self.engine, i, len(micros))
                else:  # variable micro-batch sizes: the boundary is ours to say
                    self.engine.set_gradient_accumulation_boundary(last)
                mb = mb.compact().to(self.device)
                computed, real = (
                    packed_positions(mb) if packed else (mb.input_ids.numel(), int(mb.attention_mask.sum()))
                )
                positions, real_positions = positions + computed, real_positions + real
                loss, metrics, logp = self._loss(mb, count)
                if update_index == 0 and mb.behaviour_logp is not None:
                    diag = behaviour_mismatch(logp, mb.behaviour_logp, mb.response_mask)
                    mismatch.add(diag, float(mb.response_mask.sum()))
                # The loss is this micro-batch's exact share: undo DeepSpeed's 1/GAS and its average over ranks.
                self.engine.backward(loss * backward_scale(self.world_size), scale_wrt_gas=False)
                if last and not deepspeed_records_grad_norm(self.engine.optimizer):
                    manual_norm = self._reduced_grad_norm()  # measured before step() clears the gradients
                self.engine.step()
                loss_total += float(loss.detach())
                num_tokens = float(metrics.pop("learner/num_tokens"))
                loss_metrics.add(metrics, num_tokens)
            norm = self.engine.get_global_grad_norm() if manual_norm is None else manual_norm
            grad_norm_total += float(norm) if norm is not None else float("nan")
            self.num_updates += 1
        if micro_plans is not None:
            self.engine.set_gradient_accumulation_boundary(None)  # back to DeepSpeed's own micro-step counter
        updates = len(minis) * epochs
        return {
            **loss_metrics.means(),
            **mismatch.means(),
            "learner/loss": loss_total / updates,
            "learner/num_tokens": loss_metrics.tokens / epochs,
            "learner/grad_norm": grad_norm_total / updates,
            "learner/lr": lr,
            "learner/num_updates": float(updates),
            "learner/updates_total": float(self.num_updates),
            "learner/padding_frac": 1.0 - real_positions / max(positions, 1),  # of the positions computed
            "learner/update_s": time.perf_counter() - t0,
        }

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

    def _reduced_grad_norm(self) -> float:
        """‖g‖₂ of the (already all-reduced) full gradients; used where DeepSpeed keeps no global norm."""
        grads = [p.grad for p in self._trainable() if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))

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
        self._sync = WeightSender(host, port, world_size, **sender_kwargs)

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
        """sha256 over every full parameter (name, dtype, shape, bytes); equal on all ranks iff they agree."""
        self._require_init()
        digest = hashlib.sha256()
        for name, value in sorted(
            full_named_tensors(self.engine.module, on_this_rank=True), key=lambda kv: kv[0]
        ):
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict | None = None) -> str:
        """DeepSpeed engine checkpoint (model, optimiser, LR schedule) at ckpt_dir/tag, written atomically: into
        ckpt_dir/tag.tmp, then renamed by rank 0 after every rank finished; then `latest` is replaced.
        Multi-node: ckpt_dir must be a shared filesystem. All ranks must call it."""
        import torch.distributed as dist

        self._require_init()
        root, tmp_tag = Path(ckpt_dir), f"{tag}.tmp"
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / tmp_tag, ignore_errors=True)  # leftovers of an interrupted save
        dist.barrier()
        state = dict(client_state or {})
        state[CLIENT_STATE_KEY] = {"num_updates": self.num_updates}
        self.engine.save_checkpoint(str(root), tag=tmp_tag, client_state=state, save_latest=False)
        dist.barrier()
        if self.rank == 0:
            final, old = root / tag, root / f"{tag}.old"
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.rename(final, old)
            os.rename(root / tmp_tag, final)
            shutil.rmtree(old, ignore_errors=True)
            (root / "latest.tmp").write_text(tag)
            os.replace(root / "latest.tmp", root / "latest")
        dist.barrier()
        return str(root / tag)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> dict:
        """Restore model, optimiser and LR schedule from ckpt_dir/tag (tag None: the one named in `latest`).
        Returns the client_state passed to save_checkpoint. (DeepSpeed reads its own files with torch.load.)"""
        self._require_init()
        root = Path(ckpt_dir)
        if tag is None:
            latest = root / "latest"
            if not latest.is_file():
                raise FileNotFoundError(
                    f"{latest} not found: pass tag= or point at a folder written by save_checkpoint"
                )
            tag = latest.read_text().strip()
        if not (root / tag).is_dir():
            raise FileNotFoundError(f"checkpoint {root / tag} does not exist")
        path, client_state = self.engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint at {root / tag}")
        client_state = dict(client_state or {})
        self.num_updates = int(client_state.pop(CLIENT_STATE_KEY, {}).get("num_updates", 0))
        return client_state


class LearnerActor(LearnerWorker):
    """Ray face of LearnerWorker: where it runs and rank 0's rendezvous address; all work is inherited."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def master_address(self, single_node: bool) -> tuple[str, int]:
        from grpo_lambda.distributed.rendezvous import master_address

        return master_address(single_node)
