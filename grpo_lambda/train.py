"""Hydra entry point: ``python -m grpo_lambda.train [overrides]`` (see docs/configuration.md).

python -m grpo_lambda.train                                   # the CPU demo (SmolLM2-135M on sums)
python -m grpo_lambda.train experiment=cpu_tiny_test          # a tiny random model, two steps
python -m grpo_lambda.train algorithm.lam=0.5 learner=zero3   # any key; a misspelt one fails naming it
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from grpo_lambda.config import CONF_DIR, check_overrides_or_exit, to_config
from grpo_lambda.data.jsonl import DataError


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(dcfg: DictConfig) -> None:
    from grpo_lambda.trainer import Trainer

    cfg = to_config(dcfg)
    try:
        trainer = Trainer(cfg)  # reads every data file before Ray starts
    except DataError as exc:  # file:line and what to do, in one line (like a config error)
        print(f"Data error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from grpo_lambda.checkpoint import CheckpointError

    try:
        trainer.run()
    except CheckpointError as exc:  # trainer.on_checkpoint_error=stop: folder, cause and last good checkpoint
        print(f"Checkpoint error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def main() -> None:
    check_overrides_or_exit()  # bad keys/values fail here, in seconds, before Ray or any model starts
    _main()


if __name__ == "__main__":
    main()
