"""Composing a run configuration with Hydra, and turning what goes wrong into one readable line.

    cfg = load_config(["algorithm.lam=0.5", "learner=zero3"])   # tests, scripts
    cfg = to_config(dict_config)                                 # inside a @hydra.main entry point

Error messages are built from structured information, not from Hydra's English wording: the overrides are parsed
with Hydra's own override parser and every key is looked up in the schema (unknown keys get a "did you mean" and
the valid keys at that level), group options are looked up in `conf/<group>/`, and composition errors are read
from OmegaConf's exceptions (`full_key`) and Hydra's `MissingConfigException.options`. `tests/unit/test_config.py`
has one test per message, so a Hydra or OmegaConf upgrade that changes what they report fails loudly there.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from .schema import CONF_DIR, SCHEMA_NAME, Config, default_data_dir
from .validation import ConfigError, did_you_mean, validate

MULTIRUN_FLAGS = ("-m", "--multirun")


def register_schema() -> None:
    """Register the schema in Hydra's ConfigStore as `grpo_lambda_schema` (done on import; idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


register_schema()


def load_config(
    overrides: list[str] | None = None,
    config_dir: str | Path | None = None,
    config_name: str = "config",
    check_files: bool = True,
) -> Config:
    """Compose `conf/<config_name>.yaml` with Hydra overrides (CLI syntax) and return a validated Config.

    Raises ConfigError naming the key for unknown keys, bad values and failed checks."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    config_dir = Path(config_dir or CONF_DIR).resolve()
    overrides = list(overrides or [])
    check_override_keys(overrides, config_dir)
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="grpo_lambda"):
            dcfg = compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option_message(exc)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_composition_message(exc)) from None
    except ValueError as exc:  # e.g. `experiment=null` for a group with a default
        raise ConfigError(
            f"{exc} (overrides {overrides}); to drop a default group use ~group, e.g. ~experiment"
        ) from None
    return to_config(dcfg, check_files=check_files)


def to_config(cfg: DictConfig | dict | Config, check_files: bool = True) -> Config:
    """A validated `Config` from a composed DictConfig (or a plain dict, or a Config).

    `check_files` also checks that data files, model folders and resume paths exist."""
    if isinstance(cfg, Config):
        out = cfg
    else:
        cfg = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
        cfg.pop("hydra", None)
        try:
            out = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
        except OmegaConfBaseException as exc:
            raise ConfigError(_omegaconf_message(exc)) from None
    if out.data.data_dir is None:
        out.data.data_dir = str(default_data_dir())
    return validate(out, check_files=check_files)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def check_overrides_or_exit(argv: list[str] | None = None, config_name: str = "config") -> None:
    """Fail fast on the command line: print the error and exit 2 before Hydra, Ray or a model starts.

    The first line of a `@hydra.main` entry point's `main()`. Plain runs are composed and validated in full; with
    `-m/--multirun` (values may be sweeps) only the keys and group options are checked; other Hydra flags
    (`--cfg`, `--config-name` ...) leave the arguments to Hydra."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        if not flags:
            load_config(overrides, config_name=config_name)
        elif all(f in MULTIRUN_FLAGS for f in flags):
            check_override_keys(overrides, CONF_DIR)
    except ConfigError as exc:
        print(f"Config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------ overrides, before composing
def check_override_keys(overrides: list[str], config_dir: str | Path = CONF_DIR) -> None:
    """Parse `overrides` with Hydra's parser; every key must be in the schema and every group option must be a
    file of `config_dir/<group>/`. `hydra.*` keys are Hydra's own and not checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse the overrides {overrides}: {exc}") from None
    config_dir = Path(config_dir)
    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}
    for override in parsed:
        key = override.key_or_group
        if key == "hydra" or key.startswith("hydra."):
            continue
        if key in groups:
            if override.is_delete():
                continue
            options = sorted(p.stem for p in (config_dir / key).glob("*.yaml"))
            chosen = (
                list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
            )
            for value in chosen:
                if isinstance(value, str) and value not in options:
                    raise ConfigError(
                        f"no config '{key}/{value}'{did_you_mean(value, options)}; "
                        f"options for '{key}': {', '.join(options)}"
                    )
            continue
        message = unknown_key_message(key)
        if message is not None:
            raise ConfigError(message)


def unknown_key_message(full_key: str) -> str | None:
    """The error for the first part of `full_key` that names no field of the schema, with a "did you mean" and the
    valid keys at that level; None when the key exists. Keys below a dict or list field (`cluster.env_vars.X`,
    `reward.verifier_by_dataset.gsm8k`) are free-form."""
    node: Any = Config
    parts = full_key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            parent = ".".join(parts[:i])
            valid = list(fields)
            hint = did_you_mean(part, valid)
            if parent:
                hint = hint.replace("(did you mean '", f"(did you mean '{parent}.")
            where = f"'{parent}'" if parent else "the top level"
            unknown = ".".join(parts[: i + 1])
            return f"unknown key {unknown!r}{hint}; valid keys under {where}: {', '.join(valid)}"
        node = _field_dataclass(fields[part])
        if node is None:  # a leaf or a free-form container: Hydra/OmegaConf judge what is below
            return None
    return None


def _field_dataclass(f: dataclasses.Field) -> type | None:
    if f.default_factory is dataclasses.MISSING:
        return None
    value = f.default_factory()
    return type(value) if dataclasses.is_dataclass(value) else None


# ------------------------------------------------------------------------------ composition errors
def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    full_key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    first_line = str(exc).split("\n")[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        message = unknown_key_message(str(full_key))
        if message is not None:
            return message
        if "." in str(full_key):  # a new entry of a free-form dict field (cluster.env_vars, ...)
            return f"{full_key}: {first_line}; add a new entry with '+': +{full_key}=<value>"
    if isinstance(exc, MissingMandatoryValue):
        if full_key == "model.path":
            return (
                "model.path is required (???): give the model's local HF folder (no model hub here), "
                "e.g. model.path=/models/Qwen2.5-1.5B-Instruct"
            )
        return f"{full_key} is required but not set (???): set it on the command line, {full_key}=<value>"
    if isinstance(exc, InterpolationResolutionError):
        return f"cannot resolve {full_key}: {first_line}"
    if isinstance(exc, ValidationError):
        return f"bad value for {full_key}: {first_line}"
    return f"{full_key}: {first_line}"


def _composition_message(exc: BaseException) -> str:
    """The OmegaConf error behind a Hydra composition error, with the config file Hydra was merging."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            source = re.match(r"In '([^']+)'", str(exc))  # Hydra names the file it was merging
            return _omegaconf_message(e) + (f" (in {source.group(1)}.yaml)" if source else "")
    return str(exc).strip()


def _missing_option_message(exc: BaseException) -> str:
    """Hydra's MissingConfigException carries the missing config path and the group's options."""
    missing, options = (
        str(getattr(exc, "missing_cfg_file", "") or ""),
        list(getattr(exc, "options", None) or []),
    )
    if not missing or not options:
        return str(exc).strip()
    group, _, option = missing.rpartition("/")
    return (
        f"no config {missing!r}{did_you_mean(option, options)}; options for {group!r}: {', '.join(options)}"
    )
