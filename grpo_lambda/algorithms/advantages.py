"""Group-relative advantages: the critic-free TD error of GRPO-λ (paper §3).

For a prompt with G sampled responses and rewards R_1..R_G:

    grpo     Â_i = (R_i − mean_G R) / (std_G R + eps)      (unbiased std, eps = 1e-6)
    dr_grpo  Â_i =  R_i − mean_G R                          (Dr. GRPO: no std division)
    rloo     Â_i =  R_i − mean_{j≠i} R_j = G/(G−1) (R_i − mean_G R)

Optional negative clamp (paper: c = −0.1): Â ← max(Â, c).
"""

from __future__ import annotations

import torch

from .registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group-relative advantage, got {group_size}")
    r = rewards.reshape(-1).to(torch.float32)
    if r.numel() % group_size != 0:
        raise ValueError(
            f"{r.numel()} rewards cannot be split into groups of group_size={group_size}; "
            "rewards must be ordered prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...]"
        )
    return r.view(-1, group_size)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Â_i = (R_i − mean) / (std_unbiased + eps), per group. Returns [B]."""
    r = _grouped(rewards, group_size)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, unbiased=True, keepdim=True) + eps)).reshape(-1)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Â_i = R_i − mean (Dr. GRPO). Returns [B]."""
    r = _grouped(rewards, group_size)
    return (r - r.mean(-1, keepdim=True)).reshape(-1)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Â_i = R_i − mean of the other G−1 rewards (leave-one-out baseline). Returns [B]."""
    r = _grouped(rewards, group_size)
    g = r.shape[-1]
    return (g / (g - 1) * (r - r.mean(-1, keepdim=True))).reshape(-1)


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    estimator: str = "grpo",
    eps: float = 1e-6,
    neg_clamp: float | None = None,
) -> torch.Tensor:
    """Per-response advantages [B] from prompt-major rewards [B] (or [P, G]).

    ``neg_clamp`` = c applies Â ← max(Â, c) (paper: c = −0.1 keeps wrong answers from dominating).
    """
    adv = ADVANTAGE_ESTIMATORS.get(estimator)(rewards, group_size, eps)
    if neg_clamp is not None:
        if neg_clamp > 0:
            raise ValueError(f"neg_clamp must be <= 0 (paper: -0.1), got {neg_clamp}")
        adv = adv.clamp(min=neg_clamp)
    return adv
