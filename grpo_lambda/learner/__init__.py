"""The learner: DeepSpeed ZeRO ranks computing log-probabilities and GRPO-λ updates (see group.LearnerGroup).

Its settings are the run config's `learner` section (`grpo_lambda.config.LearnerConfig`) with `model`.
"""

from .batch import (
    LearnerBatch,
    MiniBatchCounts,
    build_batch,
    concat_batches,
    mini_batch_counts,
    shard_for_data_parallel,
    split_batch,
)
from .deepspeed_setup import build_ds_config

__all__ = [
    "LearnerBatch",
    "LearnerGroup",
    "LearnerWorker",
    "MiniBatchCounts",
    "build_batch",
    "build_ds_config",
    "concat_batches",
    "mini_batch_counts",
    "shard_for_data_parallel",
    "split_batch",
]


def __getattr__(name):
    # LearnerWorker / LearnerGroup import transformers, DeepSpeed and Ray: load them only when asked for.
    if name == "LearnerWorker":
        from .worker import LearnerWorker

        return LearnerWorker
    if name == "LearnerGroup":
        from .group import LearnerGroup

        return LearnerGroup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
