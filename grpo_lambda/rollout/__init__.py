"""Rollout: what is sampled (sampling.py), the vLLM adapter (vllm_engine.py: every vLLM API call; vllm_readback.py:
reading an engine's weights back) and the engines as Ray actors with the driver's handle on them (group.py).

Importing this package does not import vLLM or Ray; the modules import them when used.
"""

from grpo_lambda.rollout.sampling import Sample, SamplingSpec

__all__ = ["Sample", "SamplingSpec"]
