"""scripts/simulate_pipeline.py: the step-time model of the rollout pipeline (pure Python, no Ray)."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "simulate_pipeline.py"
_spec = importlib.util.spec_from_file_location("simulate_pipeline", _PATH)
sim = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sim  # dataclasses look their module up there
_spec.loader.exec_module(sim)

# measured at 1 GPU per role; 4 GPUs in all
P = sim.Phases(generate=40.0, reward=2.0, learn=12.0, sync=1.0, sleep_wake=3.0, ref_gpus=1)
GPUS = 4


def run(placement, k, rollout_gpus=None, **kw):
    return sim.simulate(P, placement, k, GPUS, rollout_gpus, steps=kw.pop("steps", 30), **kw)


def test_k0_is_the_plain_sum():
    co = run("colocated", 0)
    assert co["s_per_step"] == pytest.approx(40 / 4 + 2 + 3 + 12 / 4 + 1)
    assert all(s == pytest.approx(co["s_per_step"]) for s in co["step_s"])  # no warm-up at k = 0
    for n in (1, 2, 3):
        sp = run("split", 0, n)
        assert sp["s_per_step"] == pytest.approx(40 / n + 2 + 12 / (4 - n) + 1)
        assert sp["wait_s"] == pytest.approx(40 / n)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_split_k1_is_max_of_generate_and_reward_plus_learn_plus_sync(n):
    gen, learn = 40 / n, 12 / (4 - n)
    r = run("split", 1, n)
    assert r["s_per_step"] == pytest.approx(max(gen, 2 + learn) + 1)
    assert r["wait_s"] == pytest.approx(max(0.0, gen - 2 - learn))
    assert r["engine_idle"] == pytest.approx(1 - gen / r["s_per_step"])


def test_colocated_async_overlaps_only_reward():
    """Colocated, nothing on the GPUs overlaps: k >= 1 only hides the CPU reward behind the next generation
    (the sleep queues behind it), so with no reward time it equals k = 0."""
    no_reward = sim.Phases(40.0, 0.0, 12.0, 1.0, 3.0, 1)
    for k in (1, 2):
        a = sim.simulate(no_reward, "colocated", k, GPUS, steps=30)
        assert a["s_per_step"] == pytest.approx(sim.simulate(no_reward, "colocated", 0, GPUS)["s_per_step"])
        assert run("colocated", k)["s_per_step"] == pytest.approx(max(10, 2) + 3 + 3 + 1)


@pytest.mark.parametrize("placement,n", [("colocated", None), ("split", 1), ("split", 2), ("split", 3)])
def test_k2_is_no_faster_than_k1(placement, n):
    k1, k2 = run(placement, 1, n), run(placement, 2, n)
    assert k2["s_per_step"] >= k1["s_per_step"] - 1e-9


@pytest.mark.parametrize("k", [0, 1, 2])
def test_staleness_is_k_in_steady_state(k):
    for r in (run("colocated", k), run("split", k, 2)):
        assert r["staleness"] == k
        assert r["staleness_per_step"][k:] == [k] * (30 - k)
        assert r["staleness_per_step"][:k] == list(range(k))  # the first batches were sampled by version 0


def test_async_absorbs_some_generation_jitter():
    kw = {"steps": 400, "jitter": 0.5, "seed": 1}
    k0, k1 = run("split", 0, 2, **kw), run("split", 1, 2, **kw)
    assert k1["s_per_step"] <= k0["s_per_step"]
    assert k1["step_std_s"] < k0["step_std_s"]
    # k = 0 passes the jitter straight through (step = generate + a constant); k = 1 hides what falls under
    # reward + learn
    const = 2 + 12 / 2 + 1
    gens = [s - const for s in k0["step_s"][1:]]
    assert k0["step_std_s"] == pytest.approx(statistics.pstdev(gens))
    assert statistics.fmean(gens) == pytest.approx(20, rel=0.1)  # the multiplier has mean 1
    same = run("split", 0, 2, **kw)
    assert same["step_s"] == k0["step_s"]  # fixed seed: reproducible


def test_bad_split_is_refused():
    with pytest.raises(ValueError):
        run("split", 1, 4)
    with pytest.raises(ValueError):
        run("split", 1, None)


def test_report_has_a_row_per_placement_and_k():
    table, runs = sim.report(P, GPUS, [1, 2, 3], steps=20)
    assert table.count("| colocated |") == 3 and table.count("| split |") == 3
    assert "| 1.00x |" in table  # colocated k = 0 is the baseline
    assert len(runs) == 3 * 4
