"""The prepared check for a GPU machine (CUDA torch + transformers; no vLLM or Ray needed), runnable on CPU too.

    python scripts/device_check.py --device cuda          # on the GPU machine; `--device cpu` anywhere (gloo)
    python scripts/device_check.py --device cuda --skip-learner

Checks, each printed as one JSON line, exit status 1 if any fails:
  trace     lambda_trace in fp32 and bf16 on the device against an fp64 dense reference on the CPU (every style
            and anchor, ragged masks), and its fp32 gradient against the reference's
  loss      grpo_lambda_loss (ε-trace) in bf16 on the device: finite value and gradient; λ = 0 recent == GRPO (ppo)
  sync      the weight-sync wire protocol on a real process group (nccl on CUDA, gloo on CPU) of one rank: the
            constructor, options and timeout, CUDA header/metadata/payload buffers (a 1-rank group cannot move
            data: the cross-process exchange is tested on CPU by tests/unit/test_weight_sync.py)
  learner   one DeepSpeed ZeRO-2 learner step at world size 1 on the device with a tiny random Llama, then the
            weights streamed through the sync group (skipped when DeepSpeed is not importable)
  step_w    the learner's share of a step of workload W (scripts/bench_step.py: 32 samples, ~40 prompt and up
            to 128 response tokens, one AdamW step, bf16) on a random model of SmolLM2-135M's shape, timed
            over 3 steps with and without learner.micro_batch_tokens: the `learn` input of
            scripts/simulate_pipeline.py (on CPU a 2-layer model of the same width keeps the test short)
The CPU run is part of the test suite (tests/integration/test_device_check.py, with Ray and vLLM blocked), so this script does not rot between the
rare sessions that have a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback

import torch

from grpo_lambda.algorithms import LossConfig, grpo_lambda_loss, lambda_trace
from grpo_lambda.algorithms.dense_reference import dense_lambda_trace

RESULTS: list[dict] = []


def report(check: str, ok: bool, **info) -> None:
    row = {"check": check, "ok": bool(ok), **info}
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def check_trace(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [257, 200, 1, 0]
    mask = torch.zeros(len(lengths), 257, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    x = torch.randn(len(lengths), 257, generator=g, dtype=torch.float64) * 0.1
    for style in ("recent", "both", "early"):
        for anchor in ("token", "sequence"):
            ref = dense_lambda_trace(x, mask, gamma=1.0, lam=0.99, style=style, anchor=anchor).detach()
            errs = {}
            for dtype in (torch.float32, torch.bfloat16):
                xd = x.to(device=device, dtype=dtype).requires_grad_(dtype == torch.float32)
                z = lambda_trace(xd, mask.to(device), gamma=1.0, lam=0.99, style=style, anchor=anchor)
                scale = ref.abs().max().item() or 1.0
                errs[str(dtype)] = (z.double().cpu() - ref).abs().max().item() / scale
                if dtype == torch.float32:
                    weights = torch.randn(z.shape, generator=g).to(device)
                    (z * weights).sum().backward()
                    xr = x.clone().requires_grad_(True)
                    zr = dense_lambda_trace(xr, mask, gamma=1.0, lam=0.99, style=style, anchor=anchor)
                    (zr * weights.double().cpu()).sum().backward()
                    errs["grad_fp32"] = (xd.grad.double().cpu() - xr.grad).abs().max().item() / (
                        xr.grad.abs().max().item() or 1.0
                    )
            ok = errs["torch.float32"] < 1e-5 and errs["torch.bfloat16"] < 2e-2 and errs["grad_fp32"] < 1e-5
            report("trace", ok, style=style, anchor=anchor, rel_err=errs)


def check_loss(device: torch.device) -> None:
    g = torch.Generator().manual_seed(1)
    batch, horizon = 16, 512
    mask = (torch.arange(horizon)[None] < torch.randint(1, horizon, (batch, 1), generator=g)).to(device)
    old = (torch.randn(batch, horizon, generator=g) * 0.5 - 1.5).to(device)
    logp = (old + 0.01 * torch.randn(batch, horizon, generator=g).to(device)).to(torch.bfloat16)
    logp.requires_grad_(True)
    adv = torch.randn(batch, generator=g).to(device)
    ref = old - 0.05
    loss, metrics = grpo_lambda_loss(logp, old, adv, mask, LossConfig(), ref_logp=ref)
    loss.backward()
    finite = bool(torch.isfinite(loss).item() and torch.isfinite(logp.grad).all().item())
    ratio = metrics.get("trace/ratio_mean")
    report("loss", finite, loss=loss.item(), trace_ratio_mean=None if ratio is None else float(ratio))

    lp = logp.detach().float().requires_grad_(True)
    common = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0)
    trace0, _ = grpo_lambda_loss(
        lp, old, adv, mask, LossConfig(policy_loss="trace", lam=0.0, trace_style="recent", **common)
    )
    (g_trace,) = torch.autograd.grad(trace0, lp)
    ppo, _ = grpo_lambda_loss(lp, old, adv, mask, LossConfig(policy_loss="ppo", **common))
    (g_ppo,) = torch.autograd.grad(ppo, lp)
    same = bool(torch.equal(trace0, ppo) and torch.equal(g_trace, g_ppo))
    report("loss_lambda0_is_grpo", same, trace=trace0.item(), ppo=ppo.item())


def check_sync(device: torch.device) -> None:
    from grpo_lambda.distributed.rendezvous import find_free_port
    from grpo_lambda.distributed.sync_protocol import (
        flatten_bucket,
        new_sync_group,
        send_weights,
        unflatten_bucket,
    )

    backend = "nccl" if device.type == "cuda" else "gloo"
    t0 = time.perf_counter()
    group = new_sync_group(backend, "127.0.0.1", find_free_port(), 0, 1, 60.0)
    state = {f"layer{i}.weight": torch.randn(256, 256, device=device) for i in range(8)}
    stats = send_weights(group, state.items(), 1, bucket_bytes=300_000, dtype=torch.bfloat16, device=device)
    meta, flat = flatten_bucket(list(state.items()), 1)
    back = dict(unflatten_bucket(json.loads(meta), flat))
    exact = all(torch.equal(back[k], v) for k, v in state.items())
    report("sync", stats.buckets == 4 and stats.tensors == 8 and exact, backend=backend, stats=stats.as_dict(),
           seconds=round(time.perf_counter() - t0, 3))  # fmt: skip


def check_learner(device: torch.device) -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        report("learner", True, skipped=f"DeepSpeed not importable: {e}")
        return
    from grpo_lambda.config.schema import AlgorithmConfig, Config, LearnerConfig, ModelConfig
    from grpo_lambda.distributed.rendezvous import find_free_port
    from grpo_lambda.learner import LearnerWorker, build_batch, mini_batch_counts
    from grpo_lambda.models.tiny import build_tiny_model

    folder = build_tiny_model(tempfile.mkdtemp() + "/tiny", seed=0)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    cfg = Config(model=ModelConfig(path=str(folder), dtype=dtype), algorithm=AlgorithmConfig(kl_coef=0.0, behaviour_is="none"),
                 learner=LearnerConfig(world_size=1, zero_stage=2, lr=1e-4, mini_batch_samples=8,
                                       micro_batch_samples=4))  # fmt: skip
    worker = LearnerWorker(rank=0, world_size=1)
    info = worker.init(str(folder), cfg)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 200, (12,), generator=g).tolist() for _ in range(8)]
    responses = [
        torch.randint(3, 200, (int(n),), generator=g).tolist()
        for n in torch.randint(1, 40, (8,), generator=g)
    ]
    batch = build_batch(prompts, responses, torch.randn(8, generator=g))
    batch = batch.replace(old_logp=worker.compute_logp(batch))
    t0 = time.perf_counter()
    metrics = worker.train_step(
        batch, mini_batch_samples=8, micro_batch_samples=4, counts=mini_batch_counts(batch, 8)
    )
    step_s = time.perf_counter() - t0
    backend = "nccl" if device.type == "cuda" else "gloo"
    worker.init_weight_sync("127.0.0.1", find_free_port(), 1, backend=backend, timeout_s=60, dtype="bfloat16",
                            bucket_bytes=1 << 20)  # fmt: skip
    sent = worker.broadcast_weights(1)
    ok = all(torch.isfinite(torch.tensor([metrics["learner/loss"], metrics["learner/grad_norm"]])))
    report("learner", ok and metrics["learner/grad_norm"] > 0 and sent["tensors"] > 0, device=info["device"],
           loss=metrics["learner/loss"], grad_norm=metrics["learner/grad_norm"], step_s=round(step_s, 3),
           sent=sent)  # fmt: skip


def check_step_w(device: torch.device) -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        report("step_w", True, skipped=f"DeepSpeed not importable: {e}")
        return
    from transformers import LlamaConfig, LlamaForCausalLM

    from grpo_lambda.config.schema import AlgorithmConfig, Config, LearnerConfig, ModelConfig
    from grpo_lambda.learner import LearnerWorker, build_batch, mini_batch_counts
    from grpo_lambda.learner.token_budget import plan_micro_batches

    on_gpu = device.type == "cuda"
    shape = dict(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )  # SmolLM2-135M
    folder = tempfile.mkdtemp() + "/w_model"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=30 if on_gpu else 2, **shape)).save_pretrained(folder)
    g = torch.Generator().manual_seed(3)
    prompts = [
        torch.randint(3, 49000, (int(n),), generator=g).tolist()
        for n in torch.randint(36, 44, (32,), generator=g)
    ]
    lengths = torch.randint(20, 129, (32,), generator=g)
    responses = [torch.randint(3, 49000, (int(n),), generator=g).tolist() for n in lengths]
    batch = build_batch(prompts, responses, torch.randn(32, generator=g))
    out = {}
    for label, budget in (("padded", None), ("tokens_1024", 1024)):
        cfg = Config(model=ModelConfig(path=folder, dtype="bfloat16", max_response_tokens=128),
                     algorithm=AlgorithmConfig(kl_coef=0.0, behaviour_is="none"),
                     learner=LearnerConfig(world_size=1, zero_stage=2, lr=1e-6, mini_batch_samples=32,
                                           micro_batch_samples=8, micro_batch_tokens=budget))  # fmt: skip
        worker = LearnerWorker(rank=0, world_size=1)
        worker.init(folder, cfg)
        plans = None if budget is None else [plan_micro_batches([batch], budget)[0]]  # one mini-batch
        times = []
        for _ in range(3):
            if on_gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            metrics = worker.train_step(batch, mini_batch_samples=32, micro_batch_samples=8,
                                        counts=mini_batch_counts(batch, 32), micro_plans=plans)  # fmt: skip
            if on_gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[label] = {"step_s": [round(t, 3) for t in times], "loss": metrics["learner/loss"],
                      "padding_frac": round(metrics["learner/padding_frac"], 3)}  # fmt: skip
        del worker
    ok = all(torch.isfinite(torch.tensor(v["loss"])) for v in out.values())
    report("step_w", ok, layers=30 if on_gpu else 2, tokens=int(lengths.sum()), **out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-learner", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    report("env", True, **env)
    checks = [check_trace, check_loss, check_sync] + (
        [] if args.skip_learner else [check_learner, check_step_w]
    )
    for check in checks:
        try:
            check(device)
        except Exception as e:  # one broken check must not hide the others
            report(
                check.__name__.removeprefix("check_"),
                False,
                error=repr(e),
                trace=traceback.format_exc()[-2000:],
            )
    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(json.dumps({"summary": "FAILED" if failed else "OK", "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
