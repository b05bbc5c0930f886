"""KL penalty estimators to the reference policy and token entropy (Schulman, "Approximating KL divergence").

With log r = log π_ref − log π_θ per token (samples drawn from π_θ):

    k1 = −log r = log π_θ − log π_ref           (unbiased, high variance)
    k2 = ½ (log r)²                              (biased, low variance)
    k3 = r − 1 − log r                           ("low_var_kl": unbiased, ≥ 0; clamped to [−10, 10] as in veRL)
"""

from __future__ import annotations

import torch

from .registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")
K3_CLAMP = 10.0


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_r = (ref_logp - logp).clamp(-20.0, 20.0)
    return (log_r.exp() - 1.0 - log_r).clamp(-K3_CLAMP, K3_CLAMP)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate [B, T] between π_θ and π_ref."""
    return KL_ESTIMATORS.get(estimator)(logp, ref_logp)


def behaviour_mismatch(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Engine-vs-learner diagnostics at θ = θ_old: how far the rollout engine's sampling log-probs log μ are from
    the learner's log π_θold on the same tokens (bf16, other kernels). k3 estimates KL(μ ‖ π) on μ's samples."""
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    diff = torch.where(m, behaviour_logp.float() - logp.detach().float(), zero)  # log μ − log π
    k3 = torch.where(m, torch.expm1(-diff.clamp(-20, 20)) + diff, zero)  # π/μ − 1 − log(π/μ)
    n = m.sum().clamp(min=1)
    return {
        "rollout/logp_mismatch_k3": k3.sum() / n,
        "rollout/logp_abs_diff_mean": diff.abs().sum() / n,
        "rollout/logp_abs_diff_max": diff.abs().max() if m.any() else zero,
    }


def token_logp_from_logits(
    logits: torch.Tensor, target_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(target | ·) = logit_target − logsumexp(logits), in fp32. logits [B, T, V], target_ids [B, T] → [B, T].

    Rows are processed one at a time for low-precision logits so no fp32 [B, T, V] copy is materialised.
    """
    if logits.shape[:-1] != target_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target_ids {tuple(target_ids.shape)} disagree")
    rows = [logits] if logits.dtype == torch.float32 else logits.split(1, dim=0)
    targets = [target_ids] if logits.dtype == torch.float32 else target_ids.split(1, dim=0)
    out = []
    for lg, tg in zip(rows, targets):
        lg = lg.float()
        if temperature != 1.0:
            lg = lg / temperature
        out.append(lg.gather(-1, tg.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0) if len(out) > 1 else out[0]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(l) − Σ_v softmax(l)_v · l_v per position, in fp32. [B, T, V] → [B, T]."""
    lg = logits.float()
    return torch.logsumexp(lg, dim=-1) - (torch.softmax(lg, dim=-1) * lg).sum(-1)
