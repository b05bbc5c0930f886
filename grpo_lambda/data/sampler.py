"""Stateful, resume-exact prompt sampler.

Epoch ``e`` visits the dataset in the order ``permutation(seed, e)`` (or in file order when ``shuffle`` is off);
a batch that reaches the end of an epoch continues into the next, so every batch has the requested size.
The state is three integers (``epoch``, ``position``, ``seed``) plus checks: saving it after step k and
loading it in a fresh sampler yields exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from grpo_lambda.data.jsonl import DataError


class PromptSampler:
    def __init__(self, dataset: Sequence[Any], prompts_per_step: int, seed: int = 0, shuffle: bool = True):
        if len(dataset) == 0:
            raise DataError(
                "no training prompts: data.train_files hold no rows, or every prompt is longer than "
                "model.max_prompt_tokens (raise it)"
            )
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step={prompts_per_step} must be >= 1")
        self.dataset = dataset
        self.prompts_per_step = prompts_per_step
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.position = 0  # index into this epoch's order of the next item
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def __len__(self) -> int:
        return len(self.dataset)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch ``epoch`` visits them."""
        if self._order_epoch != epoch:
            n = len(self.dataset)
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._order_epoch = epoch
        return self._order

    def next_indices(self, num_prompts: int | None = None) -> list[int]:
        """Indices of the next ``num_prompts`` (default ``prompts_per_step``) items; advances the state."""
        k = self.prompts_per_step if num_prompts is None else num_prompts
        out: list[int] = []
        while len(out) < k:
            order = self.order(self.epoch)
            take = min(k - len(out), len(order) - self.position)
            out.extend(int(i) for i in order[self.position : self.position + take])
            self.position += take
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def next_batch(self, num_prompts: int | None = None) -> list[Any]:
        """The next batch of items (``num_prompts`` lets dynamic sampling draw refills)."""
        return [self.dataset[i] for i in self.next_indices(num_prompts)]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; the dataset must have the same number of rows as when it was saved."""
        if int(state["num_rows"]) != len(self.dataset):
            raise ValueError(
                f"sampler state was saved for a dataset of {state['num_rows']} rows but this one has "
                f"{len(self.dataset)}: the data config (files, max_rows, max_prompt_tokens) changed since the "
                "checkpoint; restore it or start a new run (trainer.resume=never)"
            )
        if not 0 <= int(state["position"]) < len(self.dataset):
            raise ValueError(
                f"sampler state position={state['position']} is outside [0, {len(self.dataset)})"
            )
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order_epoch = -1
