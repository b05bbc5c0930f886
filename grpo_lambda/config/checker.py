"""The collector of configuration problems: every check adds to it, and one ConfigError lists them all."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and what to do."""


def did_you_mean(word: str, candidates: Iterable[Any]) -> str:
    close = difflib.get_close_matches(word, [str(x) for x in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Checker:
    """Collects every problem found, so that one ConfigError can list them all."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, msg: str) -> None:
        self.errors.append(msg)

    def choice(self, key: str, value: Any, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        if value not in allowed:
            self.fail(
                f"{key}={value!r} is not one of: {', '.join(allowed)}{did_you_mean(str(value), allowed)}"
            )

    def check(self, ok: bool, key: str, value: Any, must: str) -> None:
        if not ok:
            self.fail(f"{key}={value!r} {must}")
