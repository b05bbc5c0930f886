"""The run configuration: `schema.py` (the dataclasses: every value and its default), `validation.py` (every rule,
once), `loading.py` (Hydra composition and readable errors).

    from grpo_lambda.config import load_config
    cfg = load_config(["experiment=cpu_tiny_test", "algorithm.lam=0.5"])

`schema` and `validation` import neither Hydra nor OmegaConf; the loading functions import them when first used.
"""

from .schema import (
    CONF_DIR,
    DATA_DIR_ENV,
    AlgorithmConfig,
    ArithmeticConfig,
    ClusterConfig,
    Config,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    TrainerConfig,
    WandbConfig,
    default_data_dir,
    resolve_data_file,
)
from .validation import ConfigError, validate

_LOADING = ("check_overrides_or_exit", "config_to_yaml", "load_config", "to_config")


def __getattr__(name):
    if name in _LOADING:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONF_DIR",
    "DATA_DIR_ENV",
    "AlgorithmConfig",
    "ArithmeticConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LearnerConfig",
    "LoggerConfig",
    "LoraConfig",
    "ModelConfig",
    "RewardConfig",
    "RolloutConfig",
    "TrainerConfig",
    "WandbConfig",
    "check_overrides_or_exit",
    "config_to_yaml",
    "default_data_dir",
    "load_config",
    "resolve_data_file",
    "to_config",
    "validate",
]
