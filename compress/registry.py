"""Closed registries by name: models, datasets, distillation methods, stages, bench backends.

A new entry is one file that decorates itself with ``@REGISTRY.register("name")``;
a duplicate name is an error, an unknown name lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compress.errors import CompressError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise CompressError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        valid = ", ".join(sorted(self._entries))
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; valid: {valid}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """By name, so anything built from a registry is the same whatever the import order."""
        return sorted(self._entries.items(), key=lambda item: item[0])
