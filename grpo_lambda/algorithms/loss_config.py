"""`LossConfig`: every knob of the GRPO-λ loss, with the paper's defaults (ε-trace, λ 0.99, γ 1, style both, β 0.001).

The run configuration's `algorithm` section *is* this class plus the advantage and sampling knobs
(`grpo_lambda/config/schema.py`: `AlgorithmConfig(LossConfig)`), so the learner passes `cfg.algorithm` straight to
`grpo_lambda_loss`: nothing is copied. Values are checked once, with the rest of the run configuration, in
`grpo_lambda/config/validation.py`; the names come from the registries (an unknown name fails at first use too).
"""

from __future__ import annotations

from dataclasses import dataclass

# Off-policy correction by the engine's sampling log-probs (is_correction.py); SEQUENCE_IS drop whole sequences.
BEHAVIOUR_IS = ("none", "tis", "mis", "seq_filter")
SEQUENCE_IS = ("mis", "seq_filter")
# The run configuration's default: resolved at start-up where the run lands (config/resolve.py), never seen here.
BEHAVIOUR_IS_AUTO = "auto"


@dataclass
class LossConfig:
    policy_loss: str = "trace"  # ppo (clipped ratio) | trace (ε-trace) | weight (ε-weight)
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = None  # dual-clip bound (> 1) for negative advantages; null = off
    gamma: float = 1.0
    lam: float = 0.99  # λ; a = γλ is the trace decay
    trace_style: str = "both"  # recent: a^(t−k); both: max(a^(t−k), a^k); early: a^k
    trace_anchor: str = (
        "token"  # token (paper) | sequence (lag from the last token) | horizon (authors' code)
    )
    trace_floor: float = 0.0  # floor on off-diagonal trace weights (authors' code: 1e-7)
    trace_norm: str = "none"  # none (the paper) | mean: divide by the sequence's mean credit (Σ_k c_k = L)
    eligibility_grad: bool = (
        True  # ε-weight: the gradient flows through E (authors' code); false: E is a constant
    )
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_coef: float = 0.001  # β; 0 = no reference model is loaded
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"  # see aggregation.py
    max_log_ratio: float = 20.0  # overflow guard: log r and z are clamped to ±this before exp
    # none | tis (per token, min(π_old/μ, C)) | mis (per sequence: ρ = Π π_old/μ if ρ ≤ C, else dropped) |
    # seq_filter (drop sequences with ρ > C, keep the rest at weight 1). A run's config defaults to auto.
    behaviour_is: str = "none"
    behaviour_is_cap: float = 2.0  # C
