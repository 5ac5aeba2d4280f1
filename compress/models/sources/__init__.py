"""Where an architecture comes from, by the prefix of its name: ``torchvision:``, ``timm:``,
``python:``, or none (our built-ins with small-input stems).

Each source is one small file registering a ``Source``: it checks a name when the config is
validated (did-you-mean from the real list) and builds the un-adapted module. Head, channel and
stem adaptation is the same for every non-built-in source (``compress.models.adapt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from compress.registry import MODEL_SOURCES, split_arch


class Source(Protocol):
    """What a model source does; ``adapts`` False: the builder adapts head/stem itself."""

    adapts: bool

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        """Raise ValueError with one actionable line when ``name`` cannot be built."""

    def build(self, name: str, kwargs: dict[str, Any], pretrained: Any) -> nn.Module:
        """The module as its library defines it; ``pretrained``: a library weights name/flag."""

    def canonical(self, name: str) -> str:
        """The full architecture name stored in the spec (e.g. a factory file by absolute path)."""

    def check_weights(self, name: str, kwargs: dict[str, Any], weights: str) -> None:
        """Raise ValueError with one line when ``weights`` (a name or a file) cannot be loaded."""


@dataclass
class Built:
    """A built (and adapted) model and the lines saying what was replaced."""

    model: nn.Module
    changes: list[str] = field(default_factory=list)


SOURCES = MODEL_SOURCES  # one file per source in this package registers itself
split = split_arch


def is_weights_file(weights: str) -> bool:
    return "/" in weights or bool(Path(weights).suffix)


def source_of(arch: str) -> tuple[Source, str]:
    prefix, name = split(arch)
    return SOURCES.get(prefix), name
