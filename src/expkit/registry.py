"""Name -> object registries: a miss says what was asked and what exists."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A named collection of things (datasets, layer builders). Registering a name twice is an error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj

    def get(self, name: str, path=None) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}"
                f" (known: {', '.join(sorted(self._items))})",
                path=path,
            ) from None

    def __contains__(self, name) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
