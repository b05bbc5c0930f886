"""The GRPO-λ algorithm as pure tensor functions (no Ray, DeepSpeed or vLLM): advantages, λ-traces, policy
losses, KL estimators and loss aggregation, with string registries keyed by the names used in configs."""

from .advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from .aggregation import AGGREGATIONS, aggregate_loss, masked_mean
from .is_correction import behaviour_is_weights, sequence_keep
from .kl import KL_ESTIMATORS, behaviour_mismatch, entropy_from_logits, kl_penalty, token_logp_from_logits
from .loss import grpo_lambda_loss
from .loss_config import BEHAVIOUR_IS, LossConfig
from .policy_loss import POLICY_LOSSES, clipped_surrogate
from .traces import (
    TRACE_ANCHORS,
    TRACE_NORMS,
    TRACE_STYLES,
    discounted_cumsum,
    eligibility_weight,
    lambda_trace,
    trace_mean_weight,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "BEHAVIOUR_IS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "TRACE_ANCHORS",
    "TRACE_NORMS",
    "TRACE_STYLES",
    "LossConfig",
    "aggregate_loss",
    "behaviour_is_weights",
    "sequence_keep",
    "behaviour_mismatch",
    "clipped_surrogate",
    "compute_advantages",
    "discounted_cumsum",
    "eligibility_weight",
    "entropy_from_logits",
    "grpo_lambda_loss",
    "kl_penalty",
    "lambda_trace",
    "masked_mean",
    "token_logp_from_logits",
    "trace_mean_weight",
]
