"""Rollout: the engine-agnostic interface, the vLLM adapter (every vLLM call) and the RolloutWorker actor.

Importing this package does not import vLLM or Ray; `vllm_engine` and `worker` import them when used.
"""

from grpo_lambda.rollout.engine import (
    RolloutEngine,
    Sample,
    SamplingSpec,
    mismatched_weights,
    weight_checksums,
)

__all__ = ["RolloutEngine", "Sample", "SamplingSpec", "mismatched_weights", "weight_checksums"]
