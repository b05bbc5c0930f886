"""Rewards: verifiers (math via math-verify, GSM8K numeric, chained sums, format) and ``VerifierPool``, which runs every check
in a subprocess under a hard wall-clock limit. Importing this package starts nothing and does not import Ray.

    pool = VerifierPool(num_workers=2, timeout_s=5.0, use_ray=True)
    results = pool.score([VerifyRequest(response=text, answer="\\\\frac{1}{2}", verifier="math"), ...])
    metrics = outcome_metrics(results, wall_s=pool.last_wall_s)
    pool.shutdown()
"""

from grpo_lambda.rewards.metrics import outcome_metrics
from grpo_lambda.rewards.pool import VerifierPool
from grpo_lambda.rewards.spec import (
    CORRECT,
    ERROR,
    OUTCOMES,
    TIMEOUT,
    UNPARSABLE,
    WRONG,
    VerifyRequest,
    VerifyResult,
    request_for,
)
from grpo_lambda.rewards.verifiers import (
    VERIFIERS,
    check,
    format_reward,
    get_verifier,
    verify_format,
    verify_gsm8k,
    verify_math,
)

__all__ = [
    "CORRECT",
    "ERROR",
    "OUTCOMES",
    "TIMEOUT",
    "UNPARSABLE",
    "VERIFIERS",
    "WRONG",
    "VerifierPool",
    "VerifyRequest",
    "VerifyResult",
    "check",
    "format_reward",
    "get_verifier",
    "outcome_metrics",
    "request_for",
    "verify_format",
    "verify_gsm8k",
    "verify_math",
]
