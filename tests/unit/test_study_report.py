"""scripts/study_report.py: a seeded study's report from run folders (synthetic runs with known numbers)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "study_report.py"
_spec = importlib.util.spec_from_file_location("study_report", _PATH)
sr = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sr  # dataclasses look their module up there
_spec.loader.exec_module(sr)
ss = sys.modules["study_stats"]  # imported by study_report from beside it

N = 10  # training steps per run
SEEDS = [0, 1, 2, 3, 4]
E = [
    0.01,
    -0.01,
    0.02,
    -0.02,
    0.0,
]  # per-seed noise of arm B's differences: sums to 0, so mean shift is exact
REWARD_SHIFT, ACC_SHIFT = 0.1, 0.05
T975_4 = 2.7764451051977987  # t_0.975 with 4 degrees of freedom (5 pairs)


def algo(name: str) -> dict:
    if name == "grpo":
        return {"name": "grpo", "policy_loss": "ppo", "lam": 0.0, "trace_style": "recent", "trace_anchor": "token",
                "eligibility_grad": True, "kl_coef": 0.001}  # fmt: skip
    return {"name": name, "policy_loss": "trace", "lam": 0.99, "trace_style": "both", "trace_anchor": "token",
            "eligibility_grad": True, "kl_coef": 0.001}  # fmt: skip


def write_run(folder: Path, name: str, seed: int, reward, acc_end: float, *, lr=3e-5, grad_clip=1.0,
              grad_norm=lambda t: 0.5 if t % 2 == 0 else 2.0, clip_frac=0.1, steps=N, prefix_lines=(), lam=None):  # fmt: skip
    """A run folder like the trainer's: config.yaml (OmegaConf) + metrics.jsonl (eval at 0, 5 and N)."""
    folder.mkdir(parents=True)
    cfg = {
        "algorithm": {**algo(name), **({} if lam is None else {"lam": lam})},
        "learner": {"lr": lr, "grad_clip": grad_clip},
        "trainer": {
            "seed": seed,
            "total_steps": N,
            "run_name": folder.name,
            "output_dir": str(folder.parent),
        },
        "logger": {"jsonl": True},
    }
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    lines = list(prefix_lines)
    lines.append({"step": 0, "time": 1.0, "eval/arithmetic_eval/avg@1": 0.3, "eval/time_s": 3.0})
    for t in range(1, steps + 1):
        row = {"step": t, "time": 1.0 + t, "reward/mean": reward(t), "learner/grad_norm": grad_norm(t),
               "learner/clip_frac": clip_frac, "learner/kl": 0.001 * t, "response/length_mean": 10.0 + t,
               "time/step_s": 6.0}  # fmt: skip
        if t in (5, N):
            row["eval/arithmetic_eval/avg@1"] = 0.35 if t == 5 else acc_end
        lines.append(row)
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (folder / "metrics.jsonl").write_text(text)
    (folder / "summary.json").write_text(json.dumps({"steps_logged": len(lines)}))


def a_reward(s):
    return lambda t: 0.05 * t + 0.02 * s


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Arms: A grpo seeds 0-4 (+ an incomplete seed 5, seed 0 resumed); B grpo_lambda lr 3e-5 seeds 0-4 = A + shift
    + E; C grpo_lambda lr 1e-5 seeds 0-2 = A - 0.2, grad_clip 0; D grpo_lambda_weight seeds 10-12 (no common seed)."""
    root = tmp_path_factory.mktemp("study") / "multirun"
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text("a: 1\n")  # not a run: no metrics.jsonl
    for s in SEEDS:
        # seed 0 was resumed: an interrupted attempt logged steps 1-7 (6 and 7 with wrong numbers), then 6.. again
        stale = []
        if s == 0:
            stale = [
                {"step": t, "reward/mean": 9.0 if t >= 6 else a_reward(0)(t), "time/step_s": 6.0}
                for t in range(1, 8)
            ]
        write_run(
            root / "grpo" / str(s) / f"grpo_s{s}", "grpo", s, a_reward(s), 0.4 + 0.01 * s, prefix_lines=stale
        )
        write_run(root / "lam" / f"lam_s{s}", "grpo_lambda", s, lambda t, s=s: a_reward(s)(t) + REWARD_SHIFT + E[s],
                  0.4 + 0.01 * s + ACC_SHIFT + E[s], grad_norm=lambda t: 30.0, clip_frac=0.2)  # fmt: skip
    write_run(root / "grpo" / "5" / "grpo_s5", "grpo", 5, a_reward(5), 0.9, steps=7)  # incomplete
    for s in SEEDS[:3]:
        write_run(root / "lam_lr" / f"s{s}", "grpo_lambda", s, lambda t, s=s: a_reward(s)(t) - 0.2, 0.3,
                  lr=1e-5, grad_clip=0.0)  # fmt: skip
    for s in (10, 11, 12):
        write_run(
            root / "weight" / f"s{s}", "grpo_lambda_weight", s, a_reward(s - 10), 0.45 + 0.01 * (s - 10)
        )
    return root


def args(**kw):
    base = {
        "baseline": "grpo",
        "metric_eval": "arithmetic_eval",
        "last": 5,
        "seed": 0,
        "delta": 0.03,
    }
    return sr.argparse.Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def report(study):
    rep, runs = sr.build_report([study], args())
    return rep, runs


def arm(rep, label):
    return next(a for a in rep["arms"] if a["label"] == label)


def comparison(rep, label, metric):
    return next(c for c in rep["comparisons"] if c["arm"] == label and c["metric"] == metric)


def se(xs):
    return statistics.stdev(xs) / math.sqrt(len(xs))


def test_arms_labels_and_seed_counts(report):
    rep, runs = report
    labels = [a["label"] for a in rep["arms"]]
    assert sorted(labels) == sorted(
        ["grpo", "grpo_lambda (lr=3e-05)", "grpo_lambda (lr=1e-05)", "grpo_lambda_weight"]
    )
    assert {a["label"]: a["n"] for a in rep["arms"]} == {
        "grpo": 5, "grpo_lambda (lr=3e-05)": 5, "grpo_lambda (lr=1e-05)": 3, "grpo_lambda_weight": 3}  # fmt: skip
    assert arm(rep, "grpo")["seeds"] == SEEDS
    assert len(runs) == 16
    assert rep["baseline"]["label"] == "grpo"


def test_incomplete_run_is_left_out_and_listed(report):
    rep, _ = report
    assert [(r["arm"], r["seed"], r["steps"], r["total_steps"]) for r in rep["incomplete"]] == [
        ("grpo", 5, 7, 10)
    ]
    assert 5 not in arm(rep, "grpo")["seeds"]
    table = sr.table_markdown(rep)
    assert "Incomplete runs" in table and "grpo_s5" in table and "7/10 steps" in table


def test_resumed_run_counts_each_step_once(report):
    _, runs = report
    run = next(r for r in runs if r.label == "grpo" and r.seed == 0)
    assert run.training_steps() == list(range(1, N + 1))
    assert run.summary["steps"] == N
    assert run.summary["final_reward"] == pytest.approx(0.4)  # not the stale 9.0 of the interrupted attempt
    assert run.summary["wall_time_s"] == pytest.approx(60.0)


def test_table_numbers_match_hand_computation(report):
    rep, _ = report
    a = arm(rep, "grpo")["stats"]
    finals = [0.4 + 0.02 * s for s in SEEDS]  # mean of 0.05 t over t = 6..10 is 0.4
    assert a["final_reward"]["mean"] == pytest.approx(statistics.fmean(finals))
    assert a["final_reward"]["se"] == pytest.approx(se(finals))
    assert a["auc_reward"]["mean"] == pytest.approx(0.275 + 0.04)  # mean of 0.05 t over 1..10 = 0.275
    assert a["acc_start"]["mean"] == pytest.approx(0.3)
    assert a["acc_final"]["mean"] == pytest.approx(0.42)
    assert a["acc_final"]["se"] == pytest.approx(se([0.4 + 0.01 * s for s in SEEDS]))
    assert a["response_length"]["mean"] == pytest.approx(18.0)  # mean of 10 + t over t = 6..10
    assert a["kl"]["mean"] == pytest.approx(0.008)
    assert a["clip_frac"]["mean"] == pytest.approx(0.1)
    assert a["grad_norm_median"]["mean"] == pytest.approx(1.25)  # five 0.5 and five 2.0
    assert a["clipped_frac"]["mean"] == pytest.approx(0.5)  # 2.0 > grad_clip 1.0 on odd steps
    assert a["wall_time_min"]["mean"] == pytest.approx(1.0)
    b = arm(rep, "grpo_lambda (lr=3e-05)")["stats"]
    assert b["final_reward"]["mean"] == pytest.approx(0.44 + REWARD_SHIFT)
    assert b["grad_norm_median"]["mean"] == pytest.approx(30.0)
    assert b["clipped_frac"]["mean"] == pytest.approx(1.0)
    assert b["clip_frac"]["mean"] == pytest.approx(0.2)
    c = arm(rep, "grpo_lambda (lr=1e-05)")["stats"]
    assert c["clipped_frac"]["mean"] == 0.0  # grad_clip 0: never clipped
    assert c["acc_final"]["n"] == 3
    assert rep["config_differences"] == {"learner.grad_clip": ["0.0", "1.0"]}  # C's grad_clip, reported


def test_steps_to_reach_baseline_final_reward(report):
    rep, _ = report
    assert rep["baseline"]["target_reward"] == pytest.approx(0.44)
    # seed-mean curve 0.05 t + 0.04 (+ 0.1 for B); 5-step trailing mean 0.05 (t - 2) + 0.04 (+ 0.1) >= 0.44
    assert arm(rep, "grpo")["steps_to_baseline_final"] == 10
    assert arm(rep, "grpo_lambda (lr=3e-05)")["steps_to_baseline_final"] == 8
    assert arm(rep, "grpo_lambda (lr=1e-05)")["steps_to_baseline_final"] is None
    assert "not reached" in sr.table_markdown(rep)


def test_paired_difference_is_the_known_shift(report):
    rep, _ = report
    sd = statistics.stdev(E)  # 0.0158
    for metric, shift in (("auc_reward", REWARD_SHIFT), ("acc_final", ACC_SHIFT)):
        c = comparison(rep, "grpo_lambda (lr=3e-05)", metric)
        assert c["pairing"] == "paired by seed" and c["seeds"] == SEEDS and c["n_arm"] == 5
        assert c["diff"] == pytest.approx(shift)
        half = T975_4 * sd / math.sqrt(5)  # paired t-interval: mean ± t_0.975,4 · sd / sqrt(5)
        assert c["ci95"] == pytest.approx([shift - half, shift + half]) and c["ci_excludes_0"]
        assert c["interval"] == "paired t" and c["test"] == "exact sign-flip"
        assert c["p"] == pytest.approx(2 / 32) and c["p_min"] == pytest.approx(
            2 / 32
        )  # all 5 differences > 0
        assert c["sd_diff"] == pytest.approx(sd)
        # t-test sample size for δ = 0.03, (sd/δ)² = 0.278: n = 4 needs (t_.975,3 + t_.8,3)² = (3.182 + 0.978)² = 17.3
        # times 0.278 = 4.8 > 4; n = 5 needs (2.776 + 0.941)² · 0.278 = 3.84 <= 5
        assert c["n_needed_delta"] == 5
    c = comparison(rep, "grpo_lambda (lr=1e-05)", "auc_reward")
    assert c["seeds"] == [0, 1, 2] and c["diff"] == pytest.approx(-0.2)
    assert c["p"] == pytest.approx(0.25)  # 3 pairs of one sign: the smallest p 3 pairs allow, 2/8


def test_unpaired_comparison_without_common_seeds(report):
    rep, _ = report
    c = comparison(rep, "grpo_lambda_weight", "acc_final")
    assert c["pairing"] == "unpaired (no common seeds)" and c["n_arm"] == 3 and c["n_baseline"] == 5
    assert c["diff"] == pytest.approx(0.46 - 0.42)
    va, vb = (
        statistics.variance([0.45, 0.46, 0.47]) / 3,
        statistics.variance([0.4 + 0.01 * s for s in SEEDS]) / 5,
    )
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 4)  # Welch-Satterthwaite: 5.88
    half = ss.t_quantile(0.975, df) * math.sqrt(va + vb)
    assert c["interval"] == "Welch t" and c["ci95"] == pytest.approx([0.04 - half, 0.04 + half])
    # every weight seed above every grpo seed: of the C(8, 3) = 56 splits only that one and its mirror
    # (the lowest three against the rest, also 0.04 apart) are as extreme
    assert c["test"] == "exact permutation" and c["p"] == pytest.approx(2 / 56)
    sd = math.sqrt(
        statistics.variance([0.45, 0.46, 0.47]) + statistics.variance([0.4 + 0.01 * s for s in SEEDS])
    )
    assert c["sd_diff"] == pytest.approx(sd)
    assert "unpaired" in sr.comparison_markdown(rep)


def test_holm_runs_over_every_comparison_of_the_report(report):
    rep, _ = report
    rows = rep["comparisons"]  # no equal-value rows here (GRPO was run at one lr): the family is these 6
    assert rep["settings"]["holm_m"] == len(rows) == 6
    assert [r["p_holm"] for r in rows] == pytest.approx(ss.holm([r["p"] for r in rows]))
    assert all(r["p_holm"] >= r["p"] for r in rows)
    md = sr.comparison_markdown(rep)
    assert "Holm p (m = 6)" in md and "sign-flip p" in md and "95% t-interval" in md


def test_posthoc_heldout_accuracy_per_evaluation(report):
    rep, _ = report
    ph = rep["posthoc_heldout"]
    # curves.png draws grpo, grpo_lambda at its main lr (3e-05: most seeds) and the weight arm, which shares no seed
    assert ph["arms"] == ["grpo_lambda (lr=3e-05)"] and ph["steps"] == [5, 10]
    cells = {r["step"]: r for r in ph["rows"]}
    assert cells[5]["diff"] == pytest.approx(0.0) and cells[5]["level"] == 5 and cells[5]["p"] == 1.0
    assert cells[10]["diff"] == pytest.approx(ACC_SHIFT) and cells[10]["above"] == 5 and cells[10]["n"] == 5
    assert cells["mean"]["diff"] == pytest.approx(ACC_SHIFT / 2)  # mean of the evaluations at steps 5 and 10
    assert {r["step"]: r["n"] for r in ph["pooled"]} == {5: 5, 10: 5, "mean": 5}
    assert "**Post hoc**" in sr.comparison_markdown(rep)


def test_bootstrap_flag_is_accepted_and_ignored():
    a = sr.parse_args([str(Path(__file__).parent), "--bootstrap", "100"])  # study_sweep.py still passes it
    assert a.seed == 0 and a.last == 5


def test_statistics_helpers():
    assert sr.steps_to_reach([1, 2, 3, 4], [0.0, 1.0, 1.0, 1.0], 1.0, 2) == 3
    assert sr.steps_to_reach([1, 2], [0.0, 0.1], 1.0, 5) is None
    assert ss.seeds_needed(0.1, 0.03) == 90  # normal approximation: 87.2; the t-test needs a few more
    assert ss.seeds_needed(0.1, 0.0) is None and ss.seeds_needed(None, 0.03) is None
    assert sr.mean_se([1.0, None]) == {"mean": 1.0, "se": None, "n": 1}


def test_labels_only_name_the_fields_that_differ():
    k1 = ("grpo_lambda", "both", "token", "trace", True, 0.99, 3e-5)
    k2 = ("grpo_lambda", "recent", "horizon", "trace", True, 0.99, 3e-5)
    k3 = ("grpo", "recent", "token", "ppo", True, 0.0, 3e-5)
    labels = sr.arm_labels([k1, k2, k3])
    assert labels == {k1: "grpo_lambda (trace_style=both, trace_anchor=token)",
                      k2: "grpo_lambda (trace_style=recent, trace_anchor=horizon)", k3: "grpo"}  # fmt: skip


def test_several_baseline_arms_take_the_best_by_final_reward(tmp_path):
    for lr, shift in ((1e-5, 0.0), (3e-5, 0.1)):
        for s in (0, 1):
            write_run(
                tmp_path / f"grpo_{lr:g}_{s}",
                "grpo",
                s,
                lambda t, s=s, sh=shift: a_reward(s)(t) + sh,
                0.4,
                lr=lr,
            )
    rep, _ = sr.build_report([tmp_path], args())
    assert rep["baseline"]["label"] == "grpo (lr=3e-05)"
    assert "best of 2" in rep["baseline_note"]


def test_cli_writes_every_output_and_reads_copied_runs(study, tmp_path):
    # the committed form: docs/results/study/<run_name>/{config.yaml, metrics.jsonl, summary.json}
    copies = tmp_path / "copies"
    for cfg in study.rglob("metrics.jsonl"):
        dst = copies / cfg.parent.name
        dst.mkdir(parents=True)
        for f in ("config.yaml", "metrics.jsonl", "summary.json"):
            shutil.copy(cfg.parent / f, dst / f)
    cmd = [sys.executable, str(_PATH), str(copies)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = copies / "report"  # default: <first folder>/report
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (out / "table.md").read_text() in proc.stdout
    assert (out / "comparison.md").read_text() in proc.stdout
    lines = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and {
        "run_dir",
        "arm",
        "seed",
        "final_reward",
        "acc_final",
        "clipped_frac",
    } <= set(lines[0])
    rep = json.loads((out / "report.json").read_text())
    assert {a["label"]: a["n"] for a in rep["arms"]}["grpo"] == 5
    assert rep["incomplete"][0]["seed"] == 5
    c = next(
        c for c in rep["comparisons"] if c["arm"] == "grpo_lambda (lr=3e-05)" and c["metric"] == "acc_final"
    )
    assert c["diff"] == pytest.approx(ACC_SHIFT)


def test_one_pair_gives_a_difference_but_no_interval():
    class R:
        def __init__(self, seed, value):
            self.seed, self.summary = seed, {"acc_final": value}

    out = sr.compare([R(0, 0.6)], [R(0, 0.5)], "acc_final", 0, 0.03)
    assert out["diff"] == pytest.approx(0.1) and out["p"] == 1.0  # one pair: both signs are as extreme
    assert out["ci95"] is None and out["ci_excludes_0"] is None and out["sd_diff"] is None
    # two pairs: a t-interval with 1 degree of freedom, 0.15 ± 12.706 · 0.0707 / sqrt(2): wide, as it should be
    out = sr.compare([R(0, 0.6), R(1, 0.7)], [R(0, 0.5), R(1, 0.5)], "acc_final", 0, 0.03)
    assert out["diff"] == pytest.approx(0.15) and out["sd_diff"] == pytest.approx(0.0707, abs=1e-4)
    assert out["ci95"] == pytest.approx([0.15 - 0.6353, 0.15 + 0.6353], abs=1e-4) and not out["ci_excludes_0"]
    assert out["p"] == pytest.approx(0.5) and out["n_needed_delta"] is not None


def test_sweeps_are_found_tabulated_and_compared_at_each_best_and_at_equal_values(tmp_path):
    # GRPO at 3 lrs (best 3e-5); GRPO-λ at 2 lrs (best 1e-4) and, at lr 3e-5, 3 λs (best 0.9); a lone weight arm
    shifts = {("grpo", 1e-5, 0.0): -0.1, ("grpo", 3e-5, 0.0): 0.0, ("grpo", 1e-4, 0.0): -0.05,
              ("grpo_lambda", 3e-5, 0.99): 0.02, ("grpo_lambda", 1e-4, 0.99): 0.05,
              ("grpo_lambda", 3e-5, 0.0): -0.01, ("grpo_lambda", 3e-5, 0.9): 0.03}  # fmt: skip
    for (name, lr, lam), shift in shifts.items():
        for s in (0, 1, 2):
            write_run(tmp_path / f"{name}_{lr:g}_{lam}_{s}", name, s, lambda t, s=s, sh=shift: a_reward(s)(t) + sh,
                      0.4 + shift + 0.01 * s, lr=lr, lam=lam, grad_norm=lambda t, lr=lr: lr * 1e5)  # fmt: skip
    write_run(tmp_path / "weight_0", "grpo_lambda_weight", 0, a_reward(0), 0.4)
    rep, _ = sr.build_report([tmp_path], args())
    assert rep["baseline"]["label"] == "grpo (lr=3e-05)"
    sweeps = {
        (sw["field"], sw["name"], sw["fixed"].get("lam"), sw["fixed"].get("lr")): sw for sw in rep["sweeps"]
    }
    assert set(sweeps) == {("lr", "grpo", 0.0, None), ("lr", "grpo_lambda", 0.99, None),
                           ("lam", "grpo_lambda", None, 3e-5)}  # fmt: skip
    lr_grpo = sweeps["lr", "grpo", 0.0, None]
    assert [p["value"] for p in lr_grpo["points"]] == [1e-5, 3e-5, 1e-4]  # sorted by value
    assert lr_grpo["best"] == "grpo (lr=3e-05)"
    lr_lam = sweeps["lr", "grpo_lambda", 0.99, None]
    assert lr_lam["best"] == "grpo_lambda (lam=0.99, lr=0.0001)"
    mean = statistics.fmean(a_reward(s)(t) for s in (0, 1, 2) for t in range(N - 4, N + 1))
    assert lr_lam["points"][1]["stats"]["final_reward"]["mean"] == pytest.approx(mean + 0.05)
    assert lr_lam["points"][1]["stats"]["grad_norm_median"]["mean"] == pytest.approx(10.0)
    lam = sweeps["lam", "grpo_lambda", None, 3e-5]
    assert [p["value"] for p in lam["points"]] == [0.0, 0.9, 0.99] and lam[
        "best"
    ] == "grpo_lambda (lam=0.9, lr=3e-05)"
    md = sr.sweeps_markdown(rep)
    assert "| 0.0001 **(best)** | grpo_lambda (lam=0.99, lr=0.0001) | 3 |" in md
    assert "| 0.9 **(best)** | grpo_lambda (lam=0.9, lr=3e-05) | 3 |" in md
    # GRPO-λ at its best lr against GRPO at its best: the comparison rows of that arm, +0.05 on held-out accuracy
    line = next(x for x in md.splitlines() if x.startswith("- grpo_lambda (lam=0.99, lr=0.0001), held-out"))
    assert "+0.0500" in line and "paired by seed, n = 3" in line
    # GRPO-λ minus GRPO at each lr both ran: +0.02 at 3e-5, +0.10 at 1e-4 (reward and accuracy shifted alike)
    equal = {(r["value"], r["metric"]): r for r in rep["equal_value_comparisons"]}
    assert set(equal) == {(v, m) for v in (3e-5, 1e-4) for m in ("final_reward", "acc_final")}
    for (value, metric), want in {(3e-5, "acc_final"): 0.02, (1e-4, "acc_final"): 0.10,
                                  (1e-4, "final_reward"): 0.10}.items():  # fmt: skip
        row = equal[value, metric]
        assert row["diff"] == pytest.approx(want) and row["pairing"] == "paired by seed" and row["n_arm"] == 3
    assert equal[1e-4, "final_reward"]["baseline"] == "grpo (lr=0.0001)"
    assert "| 0.0001 | grpo_lambda (lam=0.99, lr=0.0001) | grpo (lr=0.0001) | 3 | +0.100 [" in md
    # the equal-value rows join the comparisons in one Holm family (GRPO-λ at 3e-5 vs GRPO at 3e-5 is in both: once)
    assert rep["settings"]["holm_m"] == len(rep["comparisons"]) + len(rep["equal_value_comparisons"]) - 1
    # curves.png: each swept algorithm at its main setting (all points have 3 seeds here: the best one)
    assert rep["curve_arms"] == ["grpo (lr=3e-05)", "grpo_lambda (lam=0.99, lr=0.0001)",
                                 "grpo_lambda (lam=0.9, lr=3e-05)", "grpo_lambda_weight"]  # fmt: skip
    out = tmp_path / "report"
    sr.write_outputs(rep, [], out)
    assert (out / "sweeps.png").read_bytes().startswith(b"\x89PNG") and (out / "sweeps.md").read_text() == md
    assert (out / "sweep_curves.png").read_bytes().startswith(b"\x89PNG")
    # a report without sweeps into the same folder leaves no stale sweep files
    rep2, _ = sr.build_report([tmp_path / "weight_0"], args())
    assert rep2["sweeps"] == []
    sr.write_outputs(rep2, [], out)
    assert not (out / "sweeps.png").exists() and not (out / "sweeps.md").exists()
    assert not (out / "sweep_curves.png").exists()


def test_a_sweeps_main_setting_is_the_value_with_most_seeds_then_the_best():
    """A sweep's side points stay out of curves.png: the main setting is the value run with the most seeds (the
    study's main stage), not a better-looking value with fewer seeds; among equals, the best."""

    def arm(lam, n, reward):
        fields = {"name": "h", "trace_style": "both", "trace_anchor": "horizon", "policy_loss": "trace",
                  "eligibility_grad": True, "lam": lam, "lr": 3e-5}  # fmt: skip
        stats = {
            k: {"mean": reward if k == "final_reward" else 0.0, "se": None}
            for k in sys.modules["study_render"].SWEEP_COLUMNS
        }
        return {"label": f"h (lam={lam})", "fields": fields, "n": n, "stats": stats}

    arms = [arm(0.0, 1, 0.6), arm(0.9, 1, 0.5), arm(0.99, 3, 0.4), {**arm(0.5, 1, 0.9), "label": "other"}]
    arms[3]["fields"] = {**arms[3]["fields"], "name": "other"}
    sweeps = sr.find_sweeps(arms)
    assert [(sw["best"], sw["main"]) for sw in sweeps] == [("h (lam=0.0)", "h (lam=0.99)")]
    assert sr.curve_arms(arms, sweeps) == ["h (lam=0.99)", "other"]
    arms[2]["n"] = 1  # now all alike: the best
    assert sr.curve_arms(arms, sr.find_sweeps(arms)) == ["h (lam=0.0)", "other"]
