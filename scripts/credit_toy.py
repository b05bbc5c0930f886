"""The credit-assignment toy: when does λ-credit help? (docs/credit.md)

A small shared-parameter policy (a GRU with learned position embeddings, ~100k parameters, vocabulary 4) writes
T tokens; the reward is 1 exactly when the token at one position k* is token 0, so only o_{k*} carries signal and
every other token's score is noise. Each arm trains its own copy of the same initial policies with the project's
own `grpo_lambda_loss` (one on-policy update per batch, G samples per group, group-normalised advantages, no
clamp, no KL); all arms and seeds run as one batched model, and every arm sees the same random numbers for the
same seed (common random numbers: the comparisons are paired).

    python scripts/credit_toy.py                        # T = 64, k* ∈ {0, T/2, T−1}, Adam and SGD, 20 seeds
    python scripts/credit_toy.py --T 256 --device cuda  # the paper's lengths (scripts/device_run.sh)

Arms (ARMS): grpo; paper (ε-trace, `both`, token anchor, λ = 0.99); authors (the launch script: `recent`, horizon
anchor at n = 3072 far beyond T, floor 1e-7); mean (paper with trace_norm=mean); late (the paper's trace run
backwards in time: a late-weighted control); lam0 (a trace whose λ is ignored, set to 0 with `recent`: GRPO exactly,
which the test shows cannot pass for GRPO-λ). Measured: steps until the
policy's probability of the rewarded token, averaged over the step's samples, reaches 90 %. Writes JSON (+ PNG).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grpo_lambda.algorithms import LossConfig, compute_advantages, grpo_lambda_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_stats import holm, sign_flip_p, t_interval  # noqa: E402

ARMS: dict[str, dict] = {
    "grpo": dict(policy_loss="ppo", lam=0.0, trace_style="recent"),
    "paper": dict(policy_loss="trace", lam=0.99, trace_style="both", trace_anchor="token"),
    "authors": dict(
        policy_loss="trace", lam=0.99, trace_style="recent", trace_anchor="horizon", trace_floor=1e-7
    ),
    "mean": dict(policy_loss="trace", lam=0.99, trace_style="both", trace_anchor="token", trace_norm="mean"),
    "late": dict(
        policy_loss="trace", lam=0.99, trace_style="both", trace_anchor="token"
    ),  # run reversed in time
    "lam0": dict(policy_loss="trace", lam=0.0, trace_style="recent", trace_anchor="token"),  # λ ignored: GRPO
}
REVERSED = {"late"}
AUTHORS_HORIZON = 3072


@dataclass
class ToyConfig:
    T: int = 64  # response tokens
    k_stars: list[int] = field(default_factory=lambda: [0])  # the decisive positions (one model set each)
    vocab: int = 4
    hidden: int = 128
    groups: int = 4  # prompts (all alike) per step
    G: int = 8  # samples per group
    steps: int = 400  # cap; a seed that never reaches the threshold counts as steps + 1 (censored)
    optimizer: str = "adam"  # adam | sgd
    lr: float | None = None  # None: 3e-3 (adam), 1.0 (sgd)
    threshold: float = 0.9
    seeds: list[int] = field(default_factory=lambda: list(range(20)))
    arms: list[str] = field(default_factory=lambda: list(ARMS))  # names of ARMS, or "name@λ" (λ overridden)
    device: str = "cpu"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (3e-3 if self.optimizer == "adam" else 1.0)


class BatchedGRU(torch.nn.Module):
    """M independent GRU policies in one set of [M, ...] tensors (M = arms × seeds); seed s's initial weights are
    the same in every arm."""

    def __init__(self, cfg: ToyConfig, seeds: list[int], copies: int):
        super().__init__()
        h, v = cfg.hidden, cfg.vocab
        per_seed = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)

            def init(*shape, scale, gen=g):
                return torch.randn(*shape, generator=gen) * scale

            per_seed.append([init(v + 1, h, scale=1.0), init(cfg.T, h, scale=1.0),
                             init(h, 3 * h, scale=h**-0.5), init(h, 3 * h, scale=h**-0.5),
                             torch.zeros(3 * h), init(h, v, scale=h**-0.5), torch.zeros(v)])  # fmt: skip
        names = ["emb", "pos", "w_ih", "w_hh", "b", "w_out", "b_out"]
        for i, name in enumerate(names):
            stacked = torch.stack([p[i] for p in per_seed]).repeat(copies, *([1] * per_seed[0][i].dim()))
            self.register_parameter(name, torch.nn.Parameter(stacked.to(cfg.device)))

    def step(self, prev: torch.Tensor, t: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: previous tokens [M, N] (vocab = BOS), state [M, N, H] -> (logits [M, N, V], state)."""
        m = torch.arange(prev.shape[0], device=prev.device)[:, None]
        x = self.emb[m, prev] + self.pos[:, t][:, None, :]
        gi = torch.baddbmm(self.b[:, None, :], x, self.w_ih)
        gh = torch.bmm(h, self.w_hh)
        size = h.shape[-1]
        r = torch.sigmoid(gi[..., :size] + gh[..., :size])
        z = torch.sigmoid(gi[..., size : 2 * size] + gh[..., size : 2 * size])
        n = torch.tanh(gi[..., 2 * size :] + r * gh[..., 2 * size :])
        h = (1 - z) * n + z * h
        return torch.baddbmm(self.b_out[:, None, :], h, self.w_out), h

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [M, N, T, V] of tokens [M, N, T]."""
        bos = torch.full_like(tokens[..., :1], self.emb.shape[1] - 1)
        prev = torch.cat([bos, tokens[..., :-1]], -1)
        h = torch.zeros(*tokens.shape[:2], self.w_hh.shape[1], device=tokens.device)
        out = []
        for t in range(tokens.shape[-1]):
            logits, h = self.step(prev[..., t], t, h)
            out.append(logits)
        return torch.stack(out, 2)

    @torch.no_grad()
    def sample(self, uniforms: torch.Tensor) -> torch.Tensor:
        """Tokens [M, N, T] by inverse-CDF sampling with the given uniforms [M, N, T] (shared across arms)."""
        m_, n_, t_ = uniforms.shape
        prev = torch.full((m_, n_), self.emb.shape[1] - 1, dtype=torch.long, device=uniforms.device)
        h = torch.zeros(m_, n_, self.w_hh.shape[1], device=uniforms.device)
        tokens = []
        for t in range(t_):
            logits, h = self.step(prev, t, h)
            cdf = logits.softmax(-1).cumsum(-1)
            prev = (
                torch.searchsorted(cdf, uniforms[..., t : t + 1].contiguous())
                .squeeze(-1)
                .clamp(max=cdf.shape[-1] - 1)
            )
            tokens.append(prev)
        return torch.stack(tokens, -1)


def arm_config(arm: str) -> tuple[LossConfig, bool, int | None]:
    """(loss config, reversed in time, horizon override) of an arm "name" or "name@λ"."""
    name, _, lam = arm.partition("@")
    kw = dict(ARMS[name])
    if lam:
        kw["lam"] = float(lam)
    return LossConfig(kl_coef=0.0, **kw), name in REVERSED, AUTHORS_HORIZON if name == "authors" else None


def run(cfg: ToyConfig, log_every: int = 0) -> dict:
    """Train every arm × decisive position × seed as one batched model (index m = (arm, k*, seed)); returns, per
    arm and k*, the steps to the threshold per seed and the mean reward curve."""
    arms, ks, seeds = cfg.arms, cfg.k_stars, cfg.seeds
    A, K, S, n = len(arms), len(ks), len(seeds), cfg.groups * cfg.G
    model = BatchedGRU(cfg, seeds, A * K)
    opt = (torch.optim.Adam(model.parameters(), lr=cfg.learning_rate) if cfg.optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=cfg.learning_rate))  # fmt: skip
    losses = [arm_config(arm) for arm in arms]
    k_of = torch.tensor(ks, device=cfg.device).repeat_interleave(S).repeat(A)  # [M]
    noise = torch.Generator(device=cfg.device).manual_seed(1234)
    mask = torch.ones(K * S * n, cfg.T, dtype=torch.bool, device=cfg.device)
    reached = torch.full((A, K, S), cfg.steps + 1)
    curves = torch.zeros(A, K, S, cfg.steps)
    t0 = time.perf_counter()
    rows = torch.arange(A * K * S, device=cfg.device)
    for step in range(cfg.steps):
        u = torch.rand(S, n, cfg.T, generator=noise, device=cfg.device).repeat(A * K, 1, 1)  # same per seed
        tokens = model.sample(u)
        logp_all = model(tokens).log_softmax(-1)  # [M, N, T, V]
        logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)  # [M, N, T]
        decisive = logp_all[rows, :, k_of]  # [M, N, V] at each model's own k*
        p_target = decisive[..., 0].exp().mean(-1).detach().view(A, K, S).cpu()  # expected reward
        curves[..., step] = p_target
        reached[(p_target >= cfg.threshold) & (reached > cfg.steps)] = step
        rewards = (tokens[rows, :, k_of] == 0).float()  # [M, N]
        total = 0.0
        for a, (loss_cfg, backwards, horizon) in enumerate(losses):
            part = slice(a * K * S, (a + 1) * K * S)
            lp = logp[part].reshape(K * S * n, cfg.T)
            adv = compute_advantages(rewards[part].reshape(-1).cpu(), cfg.G, neg_clamp=None).to(lp.device)
            loss, _ = grpo_lambda_loss(lp.flip(-1) if backwards else lp, lp.detach().flip(-1) if backwards
                                       else lp.detach(), adv, mask, loss_cfg, horizon=horizon or cfg.T)  # fmt: skip
            total = total + loss * K * S  # each model's own token-mean loss (different models' losses add)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            means = {arm: [round(float(v), 2) for v in p_target[a].mean(-1)] for a, arm in enumerate(arms)}
            print(f"step {step + 1}/{cfg.steps} {time.perf_counter() - t0:.0f}s {means}", flush=True)
        if bool((reached <= cfg.steps).all()):
            curves = curves[..., : step + 1]
            break
    return {
        "config": dataclasses.asdict(cfg),
        "steps_to_threshold": {
            arm: {str(k): reached[a, i].tolist() for i, k in enumerate(ks)} for a, arm in enumerate(arms)
        },  # fmt: skip
        "mean_curve": {
            arm: {str(k): curves[a, i].mean(0).tolist() for i, k in enumerate(ks)}
            for a, arm in enumerate(arms)
        },  # fmt: skip
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------- statistics
def paired(a: list[float], b: list[float]) -> dict:
    """mean(a − b) over n pairs, its paired 95 % t-interval and the exact two-sided sign-flip p (study_stats.py)."""
    d = [x - y for x, y in zip(a, b)]
    ci = t_interval(d)
    return {
        "n": len(d),
        "mean": sum(d) / len(d),
        "ci": list(ci) if ci else None,
        "p_signflip": sign_flip_p(d),
    }


def summarise(result: dict, baseline: str = "grpo") -> dict:
    """Per k*, each arm − the baseline on steps to threshold (negative: the arm is faster), paired by seed; the
    sign-flip p-values Holm-adjusted over the result's comparisons (`p_holm`)."""
    steps = result["steps_to_threshold"]
    out = {k: {arm: paired(steps[arm][k], steps[baseline][k]) for arm in steps if arm != baseline}
           for k in steps[baseline]}  # fmt: skip
    rows = [row for arms in out.values() for row in arms.values()]
    for row, p in zip(rows, holm([row["p_signflip"] for row in rows])):
        row["p_holm"] = p
    return out


def plot(result: dict, path: Path) -> Path:
    """One panel per decisive position: each arm's mean probability of the rewarded token over the steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = result["mean_curve"]
    ks = list(next(iter(curves.values())))
    fig = Figure(figsize=(4 * len(ks), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks):
        for i, (arm, per_k) in enumerate(curves.items()):  # styles and widths keep identical arms visible
            ax.plot(per_k[k], label=arm, lw=2.6 - 0.35 * (i % 5), ls=("-", "--", ":", "-.")[i % 4])
        ax.axhline(result["config"]["threshold"], color="grey", lw=0.6, ls=":")
        ax.set(title=f"k* = {k}", xlabel="step", ylim=(0, 1))
    axes[0].set_ylabel("P(rewarded token at k*), mean over seeds")
    axes[-1].legend(fontsize=7, loc="lower right")
    c = result["config"]
    fig.suptitle(
        f"credit toy: T = {c['T']}, {c['optimizer']} lr {c['lr'] or 'default'}, {len(c['seeds'])} seeds"
    )
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", default="64", help="response lengths, comma list")
    p.add_argument(
        "--k-star", default="0,mid,last", help="positions: ints, 'quarter' (T/4), 'mid' (T/2), 'last'"
    )
    p.add_argument("--optimizers", default="adam,sgd")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--groups", type=int, default=4, help="groups of G = 8 samples per step")
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 (adam), 1.0 (sgd)")
    p.add_argument("--arms", default=",".join(ARMS), help="names of ARMS, or name@λ")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="docs/results/credit_toy")
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for T in (int(x) for x in args.T.split(",")):
        named = {"quarter": T // 4, "mid": T // 2, "last": T - 1}
        ks = [named[k] if k in named else int(k) for k in args.k_star.split(",")]
        for optimizer in args.optimizers.split(","):
            cfg = ToyConfig(T=T, k_stars=ks, optimizer=optimizer, steps=args.steps, hidden=args.hidden, lr=args.lr,
                            groups=args.groups,
                            seeds=list(range(args.seeds)), arms=args.arms.split(","), device=args.device)  # fmt: skip
            name = f"T{T}_{optimizer}"
            print(f"== {name}: k* = {ks}, {len(cfg.arms)} arms x {args.seeds} seeds", flush=True)
            result = run(cfg, log_every=args.log_every)
            result["vs_grpo"] = summarise(result)
            (out / f"{name}.json").write_text(json.dumps(result, indent=1))
            print(f"wrote {out / f'{name}.json'} and {plot(result, out / f'{name}.png')}")
            for k, arms in result["vs_grpo"].items():
                for arm, s in arms.items():
                    print(f"  k*={k:>4} {arm:10s} − grpo: {s['mean']:+7.1f} steps [{s['ci'][0]:+.1f}, {s['ci'][1]:+.1f}]"
                          f" p={s['p_signflip']:.4f} (Holm {s['p_holm']:.4f}) n={s['n']}")  # fmt: skip


if __name__ == "__main__":
    main()
