"""Per-step timeline model of the trainer's step and its rollout pipeline (`rollout.max_staleness` = k).

    .venv/bin/python scripts/simulate_pipeline.py [--generate 120] [--reward 6] [--learn 45] [--sync 3]
        [--sleep-wake 6] [--ref-gpus 8] [--gpus 8] [--rollout-gpus all|N] [--steps 60] [--jitter 0]
        [--seed 0] [--gen-exponent 1] [--plot PATH] [--title TEXT]

A model, not a measurement: it replays the driver loop of `Trainer.step` (grpo_lambda/trainer.py) with the
pipeline of grpo_lambda/rollout/pipeline.py on phase times you give it, and prints a markdown table per
scenario: steady-state seconds per step, how idle the learner and the engines are, the staleness of the
trained samples, and the speed-up over the synchronous colocated loop (colocated, k = 0).

The driver loop it replays (one step s):
  1. `pipeline.next(s)`: submit the batches of steps up to s + k to the engines, wait for batch s;
  2. reward (CPU verifier pool; the GPUs are free);
  3. colocated only: `sleep` the engines (an engine runs its calls in order, so this queues behind any
     generation still in flight), then old_logp / ref_logp / update ("learn"), then `wake`;
  4. k >= 1: `pipeline.drain()` waits until every submitted generation has ended;
  5. sync: the learner pushes its weights to the engines (both sides busy).
The engines are one FIFO resource (a generate call is sharded over all of them and ends with the slowest).
Without jitter the steady state has a closed form (G, L: generate and learn after scaling; R reward, S sync,
W sleep + wake):
  k = 0:        colocated G + R + W + L + S;        split G + R + L + S
  k >= 1:       colocated max(G, R) + W + L + S;    split max(G, R + L) + S
Colocated, k >= 1 only hides the CPU reward behind the next generation; k >= 2 is never faster than k = 1 (the
push after step s waits for every queued generation), it only adds staleness.

Scaling assumptions (phase seconds are given as measured with `ref_gpus` GPUs for the engines and
`ref_gpus` GPUs for the learner, e.g. one colocated synchronous step on ref_gpus GPUs):
  * generate ∝ (ref_gpus / rollout GPUs) ** gen_exponent: data-parallel engines, throughput-bound.
    gen_exponent = 1 is ideal scaling. Real decoding scales worse (fewer prompts per engine run at a smaller
    batch, and a batch ends with its longest response whatever the engine count); gen_exponent < 1 models that.
  * learn ∝ ref_gpus / learner GPUs: ideal data parallelism (same global batch, no communication cost).
  * reward, sync and sleep/wake: constant (CPU pool; bandwidth-bound broadcast; per-GPU memory ops).
  * colocated: engines and learner both use all `gpus`, and sleep/wake is paid every step (half before learn,
    half after). split: `rollout_gpus` for the engines, the rest for the learner, no sleep/wake.
  * jitter: batch j's generate is multiplied by a lognormal factor of mean 1 (sigma = jitter, fixed seed; the
    same factor for batch j whatever the placement or k, so runs compare paired), a per-step long tail.
    Memory (does the model fit on the learner's share?) and network contention are not modelled.

Metrics over the steady-state steps (the first k + 1 steps, the pipeline filling up, are left out):
  s/step; learner idle % = share of wall time the learner does not learn; engine idle % = share the engines do
  not generate (sync and sleep/wake count as idle on both sides); GPU idle % = share of GPU-seconds doing
  neither; wait s = seconds per step the driver blocks on the engines (the trainer's `time/generate_s` at
  k = 0, `time/learner_wait_s` at k >= 1, plus `time/sleep_s` beyond the sleep itself when colocated);
  staleness = learner version at the update minus the samples' weights version.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Phases:
    """Seconds of one step's phases, measured with `ref_gpus` GPUs per role."""

    generate: float
    reward: float
    learn: float
    sync: float
    sleep_wake: float = 0.0
    ref_gpus: int = 1


def scaled(phases: Phases, placement: str, gpus: int, rollout_gpus: int | None, gen_exponent: float = 1.0):
    """(generate s, learn s, rollout GPUs, learner GPUs) at this placement, under the scaling assumptions."""
    if placement == "colocated":
        n_gen = n_learn = gpus
    elif placement == "split":
        if rollout_gpus is None or not 0 < rollout_gpus < gpus:
            raise ValueError(f"split needs 0 < rollout_gpus < gpus, got {rollout_gpus} of {gpus}")
        n_gen, n_learn = rollout_gpus, gpus - rollout_gpus
    else:
        raise ValueError(f"placement is colocated or split, not {placement!r}")
    gen = phases.generate * (phases.ref_gpus / n_gen) ** gen_exponent
    return gen, phases.learn * phases.ref_gpus / n_learn, n_gen, n_learn


def _overlap(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


def simulate(
    phases: Phases,
    placement: str,
    k: int,
    gpus: int,
    rollout_gpus: int | None = None,
    steps: int = 60,
    jitter: float = 0.0,
    seed: int = 0,
    gen_exponent: float = 1.0,
) -> dict:
    """Replay `steps` trainer steps; returns the steady-state metrics (see the module docstring) and the
    per-step `step_s` / `staleness` lists."""
    gen_s, learn_s, n_gen, n_learn = scaled(phases, placement, gpus, rollout_gpus, gen_exponent)
    colocated = placement == "colocated"
    sleep_s = wake_s = phases.sleep_wake / 2 if colocated else 0.0
    rng = random.Random(seed)
    factor = [rng.lognormvariate(-(jitter**2) / 2, jitter) if jitter > 0 else 1.0 for _ in range(steps + k)]

    engine_free = 0.0  # when the engines' FIFO queue runs dry
    gen_end: dict[int, float] = {}
    submitted_at: dict[
        int, int
    ] = {}  # batch -> the step that submitted it (= the weights version it samples)
    gen_busy: list[tuple[float, float]] = []
    learn_busy: list[tuple[float, float]] = []
    starts, step_s, wait_s, stale = [], [], [], []
    t = 0.0
    for s in range(steps):
        starts.append(t)
        wait = 0.0
        # 1. pipeline.next(s): top up to s + k, wait for batch s
        for j in range(max(gen_end, default=-1) + 1, s + k + 1):
            start = max(t, engine_free)
            engine_free = gen_end[j] = start + gen_s * factor[j]
            gen_busy.append((start, engine_free))
            submitted_at[j] = s  # engines have taken s pushes (FIFO: the ones queued before it)
        wait += max(0.0, gen_end[s] - t)
        t = max(t, gen_end[s])
        stale.append(s - submitted_at[s])
        # 2. reward on the CPU pool
        t += phases.reward
        # 3. colocated: sleep (queues behind in-flight generation), learn, wake
        if colocated:
            wait += max(0.0, engine_free - t)
            t = engine_free = max(t, engine_free) + sleep_s
        learn_busy.append((t, t + learn_s))
        t += learn_s
        if colocated:
            t = engine_free = t + wake_s
        # 4. drain, 5. sync
        if k > 0:
            wait += max(0.0, engine_free - t)
        t = engine_free = max(t, engine_free) + phases.sync
        step_s.append(t - starts[s])
        wait_s.append(wait)

    warm = min(k + 1, steps - 1)
    lo, hi = starts[warm], t
    span = hi - lo
    gen_t, learn_t = _overlap(gen_busy, lo, hi), _overlap(learn_busy, lo, hi)
    if colocated:  # the same GPUs; generate and learn never overlap (sleep waits for the engines)
        gpu_idle = 1 - (gen_t + learn_t) / span
    else:
        gpu_idle = 1 - (n_gen * gen_t + n_learn * learn_t) / (gpus * span)
    steady = step_s[warm:]
    return {
        "placement": placement,
        "k": k,
        "rollout_gpus": n_gen,
        "learner_gpus": n_learn,
        "generate_s": gen_s,
        "learn_s": learn_s,
        "s_per_step": span / len(steady),
        "step_std_s": statistics.pstdev(steady),
        "learner_idle": 1 - learn_t / span,
        "engine_idle": 1 - gen_t / span,
        "gpu_idle": gpu_idle,
        "wait_s": statistics.fmean(wait_s[warm:]),
        "staleness": statistics.fmean(stale[warm:]),
        "step_s": step_s,
        "staleness_per_step": stale,
    }


# ------------------------------------------------------------------------------------------------- report
HEADER = (
    "| placement | rollout:learner GPUs | k | s/step | speed-up vs colocated k=0 | learner idle % "
    "| engine idle % | GPU idle % | wait s | staleness |\n|---|---|---|---|---|---|---|---|---|---|"
)


def row(r: dict, base: float) -> str:
    st = r["staleness"]
    stale = f"{st:.0f}" if st == int(st) else f"{st:.2f}"
    return (
        f"| {r['placement']} | {r['rollout_gpus']}:{r['learner_gpus']} | {r['k']} | {r['s_per_step']:.1f} "
        f"| {base / r['s_per_step']:.2f}x | {100 * r['learner_idle']:.0f} | {100 * r['engine_idle']:.0f} "
        f"| {100 * r['gpu_idle']:.0f} | {r['wait_s']:.1f} | {stale} |"
    )


def report(phases: Phases, gpus: int, splits: list[int], ks=(0, 1, 2), **kw) -> tuple[str, dict]:
    """The markdown tables; and {(placement, k, rollout_gpus): result} for every run."""
    runs = {}
    for k in ks:
        runs["colocated", k, gpus] = simulate(phases, "colocated", k, gpus, **kw)
        for n in splits:
            runs["split", k, n] = simulate(phases, "split", k, gpus, n, **kw)
    base = runs["colocated", 0, gpus]["s_per_step"]
    lines = [HEADER]
    lines += [row(runs["colocated", k, gpus], base) for k in ks]
    for k in ks:
        best = min(splits, key=lambda n, k=k: runs["split", k, n]["s_per_step"])
        lines.append(row(runs["split", k, best], base))
    if len(splits) > 1:
        lines += ["", "s/step by split (rollout:learner GPUs); the rows above take the best split per k:", ""]
        lines.append("| rollout:learner | " + " | ".join(f"k={k}" for k in ks) + " |")
        lines.append("|---|" + "---|" * len(ks))
        for n in splits:
            cells = " | ".join(f"{runs['split', k, n]['s_per_step']:.1f}" for k in ks)
            lines.append(f"| {n}:{gpus - n} | {cells} |")
    return "\n".join(lines), runs


def plot(runs: dict, gpus: int, splits: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, style in ((0, "o-"), (1, "s-")):
        ax.plot(splits, [runs["split", k, n]["s_per_step"] for n in splits], style, label=f"split, k={k}")
    for k, style in ((0, "--"), (1, ":")):
        ax.axhline(runs["colocated", k, gpus]["s_per_step"], ls=style, c="grey", label=f"colocated, k={k}")
    ax.set_xlabel(f"rollout GPUs (of {gpus}; the rest train)")
    ax.set_ylabel("s/step (steady state)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "simulated s/step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generate", type=float, default=120.0, help="s at --ref-gpus engine GPUs")
    p.add_argument("--reward", type=float, default=6.0)
    p.add_argument("--learn", type=float, default=45.0, help="old_logp + ref_logp + update, s at --ref-gpus")
    p.add_argument("--sync", type=float, default=3.0)
    p.add_argument("--sleep-wake", type=float, default=6.0, help="sleep + wake, colocated only")
    p.add_argument("--ref-gpus", type=int, default=8, help="GPUs per role where the phases were measured")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--rollout-gpus", default="all", help="split: engine GPUs, or 'all' to sweep 1..gpus-1")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--jitter", type=float, default=0.0, help="lognormal sigma of generate per step (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-exponent", type=float, default=1.0, help="generate ∝ (ref/rollout GPUs)^this")
    p.add_argument("--plot", metavar="PATH", help="PNG of s/step vs split for k=0 and k=1")
    p.add_argument("--title", default="")
    a = p.parse_args()
    phases = Phases(a.generate, a.reward, a.learn, a.sync, a.sleep_wake, a.ref_gpus)
    splits = list(range(1, a.gpus)) if a.rollout_gpus == "all" else [int(a.rollout_gpus)]
    kw = {"steps": a.steps, "jitter": a.jitter, "seed": a.seed, "gen_exponent": a.gen_exponent}
    table, runs = report(phases, a.gpus, splits, **kw)
    if a.title:
        print(f"### {a.title}\n")
    print(
        f"Inputs (s at {a.ref_gpus} GPUs per role): generate {a.generate:g}, reward {a.reward:g}, "
        f"learn {a.learn:g}, sync {a.sync:g}, sleep+wake {a.sleep_wake:g}; {a.gpus} GPUs; jitter {a.jitter:g}; "
        f"gen exponent {a.gen_exponent:g}; {a.steps} steps.\n"
    )
    print(table)
    if a.plot:
        if len(splits) > 1:
            plot(runs, a.gpus, splits, a.plot, a.title)
        else:
            print("\n(--plot needs --rollout-gpus all)")


if __name__ == "__main__":
    main()
