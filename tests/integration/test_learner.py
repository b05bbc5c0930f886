"""The learner for real: Ray actors, DeepSpeed ZeRO 0-3 on the CPU accelerator (gloo), a tiny Llama.

The central check is exactness of the distributed update: one mini-batch split over 2 ranks x 2 micro-batches
must give the gradient of the single-process full-batch loss (DeepSpeed's 1/GAS and rank-average undone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from grpo_lambda.algorithms import grpo_lambda_loss, sequence_keep
from grpo_lambda.config import AlgorithmConfig, Config, LearnerConfig, ModelConfig
from grpo_lambda.learner import build_batch
from grpo_lambda.learner.model import load_causal_lm, response_logp

pytestmark = pytest.mark.integration
LR = 1.0  # SGD step: parameter change / LR is exactly the gradient
H = 16  # model.max_response_tokens: the run's constant horizon (the responses of make_batch have 1-12 tokens)


# Fixtures from tests/conftest.py: `tiny_model_dir` (random 2-layer Llama, untied), `tiny_tied_model_dir` (tied
# embeddings, 1 KV head), `ray_local` (a local Ray cluster for the session).


def run_config(model_dir, dtype: str, loss: AlgorithmConfig, **learner) -> Config:
    """The parts of a run config the learner reads: model, learner (2 ranks unless given) and the loss."""
    return Config(model=ModelConfig(path=str(model_dir), dtype=dtype, max_response_tokens=H), algorithm=loss,
                  learner=LearnerConfig(**{"world_size": 2, **learner}))  # fmt: skip


def make_batch(n: int = 8, seed: int = 0, group: int = 1):
    """n samples with prompts of 2-6 and responses of 1-12 tokens (uneven, so padding and compaction matter);
    `group` consecutive samples share a prompt (as the G samples of a GRPO group do)."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, 256, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    prompts = [p for p in (ids(2, 7) for _ in range(n // group)) for _ in range(group)]
    return build_batch(prompts, [ids(1, 13) for _ in range(n)], torch.randn(n, generator=g))


def with_ref_logp(batch, model_dir, seed: int = 0):
    """A reference policy that differs from θ, so the KL term has a gradient."""
    model = load_causal_lm(model_dir, dtype="float32")
    with torch.no_grad():
        logp, _ = response_logp(model, batch)
    noise = 0.3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(seed))
    return batch.replace(ref_logp=(logp + noise).masked_fill(~batch.response_mask, 0.0))


def reference_step(model_dir, batch, loss_cfg):
    """Single process, whole mini-batch at once, plain torch: (initial weights, gradients, grad norm, loss)."""
    model = load_causal_lm(model_dir, dtype="float32")
    logp, _ = response_logp(model, batch)
    loss, _ = grpo_lambda_loss(
        logp,
        logp.detach(),
        batch.advantages,
        batch.response_mask,
        loss_cfg,
        ref_logp=batch.ref_logp,
        horizon=H,
        behaviour_logp=batch.behaviour_logp,
    )
    loss.backward()
    named = dict(model.named_parameters(remove_duplicate=False))
    weights = {k: p.detach().clone() for k, p in named.items()}
    grads = {k: p.grad.detach().clone() for k, p in named.items()}
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    return weights, grads, norm.item(), loss.item()


def assert_sgd_step_matches(before, after, ref_weights, ref_grads):
    assert set(before) == set(ref_weights), "gathered state dict names differ from the HF model's"
    for name, w in ref_weights.items():
        assert torch.equal(before[name], w), f"{name}: gathered initial weights differ from the HF checkpoint"
        grad = (before[name] - after[name]) / LR
        scale = float(ref_grads[name].abs().max()) + 1e-12
        torch.testing.assert_close(
            grad, ref_grads[name], rtol=1e-4, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


# ZeRO stage -> the loss exercised with it (token, sequence and horizon normalisers all go through the ranks).
# seq-mean-token-sum-norm divides by the run's constant H and the horizon anchor measures lags from H: every
# (compacted, narrower) micro-batch must use that same H, not its own width.
# With learner.micro_batch_tokens the micro-batches are grouped by length: a budget of 30 positions gives each rank
# 3 micro-batches of 1, 2 and 1 rows, reordered by length; one of 24 gives the ranks 3 and 4 before the plan splits
# rank 0's pair to make the counts equal (ZeRO-3 forwards are collective).
INVARIANCE_CASES = [
    (0, dict(loss_agg="token-mean"), {}),
    (1, dict(loss_agg="seq-mean-token-mean"), {}),
    (2, dict(loss_agg="seq-mean-token-sum-norm"), {}),
    (
        3,
        dict(loss_agg="seq-mean-token-sum", trace_anchor="horizon", trace_floor=1e-7, trace_style="recent"),
        {},
    ),
    (2, dict(loss_agg="token-mean"), dict(micro_batch_tokens=30)),
    (3, dict(loss_agg="seq-mean-token-sum-norm"), dict(micro_batch_tokens=24)),
    # group packing: each rank's two prompt groups of 2 are packed rows (prompt once, both responses after it)
    (2, dict(loss_agg="token-mean", trace_anchor="horizon"), dict(micro_batch_tokens=40, pack_groups=True)),
    # the length-neutral trace: each sequence's own mean credit, whatever the micro-batch and rank
    (1, dict(loss_agg="token-mean", trace_norm="mean", trace_anchor="sequence"), {}),
    # masked IS: the driver counts the kept sequences only (sequence_keep), the ranks drop the others alike
    (2, dict(loss_agg="seq-mean-token-mean", behaviour_is="mis", behaviour_is_cap=1.5), {}),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage, loss, learner", INVARIANCE_CASES)
def test_two_ranks_two_micro_batches_equal_the_full_batch_gradient(
    ray_local, tiny_model_dir, stage, loss, learner
):
    import ray

    from grpo_lambda.learner.group import LearnerGroup

    model_dir = str(tiny_model_dir)

    loss_cfg = AlgorithmConfig(**{"kl_coef": 0.1, "behaviour_is": "none", **loss})
    batch = with_ref_logp(make_batch(8, group=2 if learner.get("pack_groups") else 1), model_dir)
    if loss_cfg.behaviour_is != "none":  # an engine whose log-probs differ from θ_old's
        batch = batch.replace(behaviour_logp=with_ref_logp(batch, model_dir, seed=1).ref_logp)
    ref_weights, ref_grads, ref_norm, ref_loss = reference_step(model_dir, batch, loss_cfg)

    # 8 samples = 2 ranks x 2 micro-batches x 2 samples: DeepSpeed GAS = 2
    cfg = run_config(model_dir, "float32", loss_cfg, zero_stage=stage, optimizer="sgd", lr=LR, grad_clip=0.0,
                     mini_batch_samples=8, micro_batch_samples=2, **learner)  # fmt: skip
    group = LearnerGroup(cfg, model_dir)
    try:
        # one update: θ_old = θ, no extra forward, unless sequences are dropped (the normalisers need π_old first)
        assert group.needs_old_logp(len(batch)) == (loss_cfg.behaviour_is == "mis")
        if loss_cfg.behaviour_is == "mis":
            batch = batch.replace(old_logp=group.compute_logp(batch))
            keep = sequence_keep(batch.old_logp, batch.behaviour_logp, batch.response_mask, "mis", 1.5)
            assert 0 < int(keep.sum()) < len(batch)  # some sequences are dropped, some kept
        if learner:  # the log-prob pass takes the same length-aware plan: rows come back in their order
            with torch.no_grad():
                expected_logp, _ = response_logp(load_causal_lm(model_dir, dtype="float32"), batch)
            torch.testing.assert_close(group.compute_logp(batch), expected_logp, rtol=1e-5, atol=1e-5)
        before = ray.get(group.state_dict_ref())
        metrics = group.train_step(batch)
        after = ray.get(group.state_dict_ref())
        checksums = group.param_checksums()
    finally:
        group.shutdown()

    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert metrics["learner/num_updates"] == 1 and metrics["learner/num_tokens"] == batch.num_tokens
    assert metrics["learner/loss"] == pytest.approx(ref_loss, rel=1e-5, abs=1e-7)
    assert metrics["learner/grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
    assert checksums[0] == checksums[1], "ranks hold different parameters after the step"
    assert_sgd_step_matches(before, after, ref_weights, ref_grads)


@pytest.mark.timeout(240)
def test_checkpoint_resume_and_synced_weights(ray_local, tiny_tied_model_dir, tmp_path):
    """ZeRO-3, bf16, AdamW with warmup, a reference model, tied embeddings, 2 mini-batches per step:
    save -> load into a fresh group -> same parameters, same next-step metrics; the synced state dict is HF's."""
    import ray
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from grpo_lambda.learner.group import LearnerGroup

    tied_model_dir = str(tiny_tied_model_dir)

    cfg = run_config(tied_model_dir, "bfloat16", AlgorithmConfig(kl_coef=0.01, behaviour_is="none"), zero_stage=3, lr=1e-3,
                     lr_schedule="linear_warmup", warmup_steps=3, mini_batch_samples=4, micro_batch_samples=1)  # fmt: skip
    batch1, batch2 = make_batch(8, seed=1), make_batch(8, seed=2)
    ckpt = tmp_path / "ckpt"

    def step(group, batch):
        """What Trainer.step does around the update: θ_old and reference log-probs first."""
        assert group.needs_old_logp(len(batch))  # 2 mini-batches: the 2nd must see θ_old, not θ
        batch = batch.replace(
            old_logp=group.compute_logp(batch), ref_logp=group.compute_logp(batch, reference=True)
        )
        return group.train_step(batch)

    first = LearnerGroup(cfg, tied_model_dir)
    try:
        m1 = step(first, batch1)
        first.save_checkpoint(str(ckpt), "step1", client_state={"trainer_step": 1})
        synced = ray.get(first.state_dict_ref())
        sums1 = first.param_checksums()
        m2 = step(first, batch2)
        sums2 = first.param_checksums()
    finally:
        first.shutdown()
    assert m1["learner/num_updates"] == 2 and m1["learner/lr"] == pytest.approx(1e-3 / 3)
    assert m1["learner/kl"] > 0 and m1["learner/approx_kl"] != 0  # 2nd mini-batch sees θ ≠ θ_old
    assert sums1[0] == sums1[1] and sums2[0] == sums2[1] and sums1 != sums2
    assert (ckpt / "step1").is_dir() and not [f for f in os.listdir(ckpt) if f.endswith((".tmp", ".old"))]
    assert (ckpt / "latest").read_text() == "step1"

    second = LearnerGroup(cfg, tied_model_dir)
    try:
        client_state = second.load_checkpoint(str(ckpt), "step1")
        sums_loaded = second.param_checksums()
        logp_loaded = second.compute_logp(batch2)
        m2_resumed = step(second, batch2)
        sums2_resumed = second.param_checksums()
    finally:
        second.shutdown()
    assert client_state["trainer_step"] == 1
    assert sums_loaded == sums1
    assert sums2_resumed == sums2
    timeless = lambda m: {k: v for k, v in m.items() if not (k.startswith("time/") or k.endswith("_s"))}  # noqa: E731
    assert timeless(m2_resumed) == timeless(m2)

    # The synced weights are an HF state dict (tied lm_head sent explicitly) ...
    assert torch.equal(synced["lm_head.weight"], synced["model.embed_tokens.weight"])
    assert all(t.dtype == torch.bfloat16 for t in synced.values())
    hf = AutoModelForCausalLM.from_pretrained(tied_model_dir, dtype=torch.bfloat16)
    missing, unexpected = hf.load_state_dict(synced, strict=False)
    assert not missing and not unexpected
    with torch.no_grad():
        hf_logp, _ = response_logp(hf, batch2)
    torch.testing.assert_close(hf_logp, logp_loaded, rtol=0, atol=2e-2)
    # ... equal to the checkpoint's fp32 master weights rounded to the engine dtype.
    master = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="step1")
    for name, value in master.items():
        assert torch.equal(value.to(torch.bfloat16), synced[name]), name


@pytest.mark.timeout(180)
def test_single_process_worker_without_ray(tiny_model_dir, tmp_path):
    """LearnerWorker at world_size 1 (no Ray): 4 micro-batches accumulate to the full-batch gradient too.
    Runs in a subprocess so torch.distributed state does not leak into the test process."""
    model_dir = str(tiny_model_dir)
    loss_cfg = AlgorithmConfig(kl_coef=0.1, behaviour_is="none")
    batch = with_ref_logp(make_batch(8), model_dir)
    ref_weights, ref_grads, ref_norm, _ = reference_step(model_dir, batch, loss_cfg)
    torch.save({"batch": batch.__dict__}, tmp_path / "batch.pt")
    script = textwrap.dedent(
        f"""
        import json, torch
        from grpo_lambda.config import AlgorithmConfig, Config, LearnerConfig, ModelConfig
        from grpo_lambda.learner import LearnerBatch, LearnerWorker, mini_batch_counts
        batch = LearnerBatch(**torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)["batch"])
        # Configured for GAS 2: train_step(mini 8, micro 2) must re-program DeepSpeed to GAS 4 (else it steps early).
        cfg = Config(model=ModelConfig(path={model_dir!r}, dtype="float32"), algorithm=AlgorithmConfig(kl_coef=0.1, behaviour_is="none"),
                     learner=LearnerConfig(world_size=1, zero_stage=2, optimizer="sgd", lr={LR}, grad_clip=0.0,
                                           mini_batch_samples=4, micro_batch_samples=2))
        worker = LearnerWorker(rank=0, world_size=1)
        worker.init({model_dir!r}, cfg)
        before = worker.gather_state_dict()
        metrics = worker.train_step(batch, mini_batch_samples=8, micro_batch_samples=2,
                                    counts=mini_batch_counts(batch, 8))
        torch.save({{"before": before, "after": worker.gather_state_dict()}}, {str(tmp_path / "out.pt")!r})
        print("METRICS" + json.dumps(metrics))
        """
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=170, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.split("METRICS", 1)[1])
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert metrics["learner/grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
    assert_sgd_step_matches(out["before"], out["after"], ref_weights, ref_grads)


@pytest.mark.timeout(60)
def test_learner_group_on_its_own_placement_keeps_role_resources(ray_local, tiny_model_dir):
    """A LearnerGroup made without the trainer's placement pins its ranks as the trainer would: a learner pinned
    to a resource no node has fails at once, naming it (it used to be placed anywhere, the pin dropped)."""
    from grpo_lambda.config import ClusterConfig
    from grpo_lambda.distributed.placement import PlacementError
    from grpo_lambda.learner.group import LearnerGroup

    cfg = run_config(tiny_model_dir, "float32", AlgorithmConfig(behaviour_is="none"), world_size=1)
    cfg.cluster = ClusterConfig(role_resources={"learner": {"gpu_node_missing": 1.0}})
    with pytest.raises(PlacementError, match="gpu_node_missing"):
        LearnerGroup(cfg, str(tiny_model_dir))


@pytest.mark.timeout(60)
def test_actor_group_on_placement_groups(ray_local):
    import asyncio

    from ray.util.placement_group import remove_placement_group

    from grpo_lambda.distributed import ActorGroup, RoleSpec, place_roles

    class Echo:  # defined here so Ray ships it by value (the test module is not importable by workers)
        def __init__(self, tag: str = "", rank: int = -1):
            self.tag, self.rank = tag, rank

        def whoami(self, suffix: str = "") -> str:
            return f"{self.tag}{self.rank}{suffix}"

    # Colocated: both roles share one placement group, bundle i sized for actor i of each role.
    roles = [RoleSpec("learner", 2, cpus_per_actor=0.25), RoleSpec("rollout", 2, cpus_per_actor=0.5)]
    placements = place_roles(roles, colocate=True)
    pg = placements["learner"].placement_group
    assert placements["rollout"].placement_group is pg and pg.bundle_specs == [{"CPU": 0.75}] * 2
    learners = ActorGroup(Echo, placements["learner"], args=("L",), per_actor_args=[(0,), (1,)])
    rollouts = ActorGroup(Echo, placements["rollout"], args=("R",), per_actor_args=[(0,), (1,)])
    try:
        assert learners.call("whoami", "!") == ["L0!", "L1!"]
        assert rollouts.call_each("whoami", [("a",), ("b",)]) == ["R0a", "R1b"]
        assert learners.call_each("whoami", [(), ()], [{"suffix": "x"}, {"suffix": "y"}]) == ["L0x", "L1y"]
        assert asyncio.run(rollouts.acall("whoami")) == ["R0", "R1"]
        with pytest.raises(ValueError, match="3 argument tuples"):
            learners.call_each("whoami", [(), (), ()])
    finally:
        learners.kill()
        rollouts.kill()
        remove_placement_group(pg)
