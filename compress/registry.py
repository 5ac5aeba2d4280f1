"""Closed registries by name: stages, distillation methods, bench backends, datasets, models,
pruning importances.

A new entry is one file that decorates itself with ``@REGISTRY.register("name")``; a duplicate
name is an error, an unknown name lists the valid ones. Each registry names the modules where
its entries live (every module of a package, or one module) and imports them the first time it
is read, so the config layer can validate names without importing the libraries that register
them: dependencies point one way, and the registry is the single source of names.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from compress.errors import CompressError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, discover: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._discover = discover
        self._loaded = not discover

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> None:
        """Drop an entry (tests register throwaway entries and remove them again)."""
        self._entries.pop(name, None)

    def load(self) -> None:
        """Import the modules that register this registry's entries (once)."""
        if self._loaded:
            return
        self._loaded = True  # before importing: a module being imported may read the registry
        for name in self._discover:
            import_all(name)

    def get(self, name: str) -> T:
        self.load()
        if name not in self._entries:
            raise CompressError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        self.load()
        valid = ", ".join(sorted(self._entries))
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; valid: {valid}"

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """By name, so anything built from a registry is the same whatever the import order."""
        self.load()
        return sorted(self._entries.items(), key=lambda item: item[0])


def import_all(name: str) -> None:
    """Import a module, and every module of it if it is a package."""
    module = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        importlib.import_module(f"{name}.{info.name}")


# The registries. Entry types are the libraries' (StageSpec, MethodSpec, ...): Any here, so this
# bottom layer imports none of them.
STAGES: Registry[Any] = Registry("stage type", discover=("compress.stages",))
METHODS: Registry[Any] = Registry(
    "distillation method", discover=("compress.distill.methods", "compress.distill.mix")
)
BACKENDS: Registry[Any] = Registry("bench backend", discover=("compress.bench.backends",))
DATASETS: Registry[Any] = Registry("dataset", discover=("compress.data.sources",))
MODELS: Registry[Any] = Registry("model", discover=("compress.models",))
# Where an architecture comes from, by the prefix of its name (compress.models.sources)
MODEL_SOURCES: Registry[Any] = Registry("model source", discover=("compress.models.sources",))
IMPORTANCES: Registry[Any] = Registry(
    "pruning importance", discover=("compress.prune.importances",)
)


def split_arch(arch: str) -> tuple[str, str]:
    """``'torchvision:resnet18'`` -> ``('torchvision', 'resnet18')``; no prefix: a built-in."""
    prefix, sep, name = arch.partition(":")
    return (prefix, name) if sep else ("builtin", arch)
