"""Broadcast weight sync: bucketing and packing (pure), then the wire protocol between real processes over gloo."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest
import torch

from grpo_lambda.distributed.rendezvous import find_free_port
from grpo_lambda.distributed.sync_protocol import (
    WeightReceiver,
    flatten_bucket,
    iter_buckets,
    new_sync_group,
    parse_dtype,
    send_weights,
    unflatten_bucket,
)


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(50, 8, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(8, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8, generator=g),
        "model.norm.weight": torch.randn(8, generator=g),
        "step_counter": torch.tensor([7], dtype=torch.int64),  # a non-float buffer keeps its dtype
    }


# ---------------------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("bucket_bytes", [1, 64, 600, 1 << 20])
def test_buckets_keep_order_respect_the_size_and_split_on_dtype(bucket_bytes):
    named = list(state().items())
    buckets = list(iter_buckets(named, bucket_bytes, torch.bfloat16))
    flat = [(n, t) for b in buckets for n, t in b]
    assert [n for n, _ in flat] == [n for n, _ in named]
    for bucket in buckets:
        assert len({t.dtype for _, t in bucket}) == 1
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= bucket_bytes or len(bucket) == 1  # only a lone oversized tensor may exceed it
    for (name, sent), (_, orig) in zip(flat, named, strict=True):
        if orig.is_floating_point():
            assert sent.dtype == torch.bfloat16 and torch.equal(sent, orig.to(torch.bfloat16)), name
        else:
            assert torch.equal(sent, orig), name
    if bucket_bytes == 1 << 20:  # everything fits: one float bucket, then the int64 one
        assert len(buckets) == 2


def test_flatten_then_unflatten_round_trips_exactly():
    bucket = [(n, t) for n, t in state().items() if t.is_floating_point()]
    meta, flat = flatten_bucket(bucket, version=3)
    decoded = json.loads(meta)
    assert decoded["version"] == 3 and decoded["dtype"] == "float32"
    out = unflatten_bucket(decoded, flat)
    assert [n for n, _ in out] == [n for n, _ in bucket]
    for (_, a), (_, b) in zip(out, bucket, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)
    with pytest.raises(ValueError, match="payload has"):
        unflatten_bucket(decoded, flat[:-1])


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets(state().items(), 0))
    with pytest.raises(ValueError, match="unsupported weight dtype"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match="gloo or nccl"):
        new_sync_group("mpi", "127.0.0.1", 1, 0, 2, 1.0)
    with pytest.raises(ValueError, match="outside world_size"):
        new_sync_group("gloo", "127.0.0.1", 1, 2, 2, 1.0)


# ---------------------------------------------------------------------------------------------- the wire
def _sender(port, world, versions, bucket_bytes, out):
    group = new_sync_group("gloo", "127.0.0.1", port, 0, world, 20.0)
    for v in versions:
        stats = send_weights(group, state(v).items(), v, bucket_bytes=bucket_bytes, dtype=torch.bfloat16)
        out.put(("sent", v, stats.as_dict()))


def _receiver(port, world, rank, versions, out, stop_after):
    group = new_sync_group("gloo", "127.0.0.1", port, rank, world, 20.0)
    for v in versions:
        receiver = WeightReceiver(group, v, aliases={"model.embed_tokens.weight": "lm_head.weight"})
        got = {}
        try:
            for i, (name, t) in enumerate(receiver.tensors()):  # a loader that may stop early
                if stop_after is not None and i == stop_after:
                    break
                got[name] = t.clone()
            stats = receiver.finish()
        except RuntimeError as e:
            out.put(("error", rank, v, str(e)))
            continue
        out.put(("got", rank, v, stats.as_dict(), got))


def run_group(sender_versions, receiver_versions, bucket_bytes=600, stop_after=None, receivers=2):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port, world = find_free_port(), 1 + receivers
    procs = [ctx.Process(target=_sender, args=(port, world, sender_versions, bucket_bytes, out))]
    procs += [ctx.Process(target=_receiver, args=(port, world, r, receiver_versions, out, stop_after))
              for r in range(1, world)]  # fmt: skip
    for p in procs:
        p.start()
    results, deadline = [], time.monotonic() + 60
    expected = len(sender_versions) + receivers * len(receiver_versions)
    while len(results) < expected and time.monotonic() < deadline:
        try:
            results.append(out.get(timeout=1))
        except Exception:
            if not any(p.is_alive() for p in procs):
                break
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return results


@pytest.mark.timeout(120)
def test_every_receiver_gets_every_tensor_bit_exact_in_the_engine_dtype():
    results = run_group([1, 2], [1, 2])
    sent = {r[1]: r[2] for r in results if r[0] == "sent"}
    got = [r for r in results if r[0] == "got"]
    assert len(sent) == 2 and len(got) == 4, results
    for _, rank, version, stats, tensors in got:
        assert stats == sent[version] and stats["buckets"] > 1  # several buckets, counted alike on both sides
        expected = state(version)
        assert set(tensors) == set(expected) | {"lm_head.weight"}
        for name, value in expected.items():
            want = value.to(torch.bfloat16) if value.is_floating_point() else value
            assert tensors[name].dtype == want.dtype and torch.equal(tensors[name], want), (rank, name)
        assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])


@pytest.mark.timeout(120)
def test_a_loader_that_stops_early_is_an_error_and_the_group_stays_in_step():
    results = run_group([1, 2], [1, 2], stop_after=2, receivers=1)
    errors = [r for r in results if r[0] == "error"]
    assert [e[2] for e in errors] == [1, 2], results  # both rounds complete (drained), both reported
    assert all("stopped" in e[3] for e in errors)


@pytest.mark.timeout(120)
def test_a_receiver_in_another_round_fails_loudly():
    results = run_group([2], [1], receivers=1)
    errors = [r for r in results if r[0] == "error"]
    assert errors and "out of step" in errors[0][3], results
