"""Our own architectures (``resnet34``, ``mobilenet_v2``...): no prefix, small-input stems."""

from __future__ import annotations

from typing import Any

from torch import nn

from compress.models.sources import SOURCES
from compress.models.weights import check_weights_path
from compress.registry import MODELS


class BuiltinSource:
    adapts = False  # built with the right head, channels and stem from the start

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        if name not in MODELS:
            raise ValueError(MODELS.unknown_message(name) + "; or torchvision:NAME, timm:NAME, "
                             "python:FILE.py:FACTORY")  # fmt: skip
        if kwargs:
            raise ValueError(f"built-in '{name}' takes no kwargs (width_mult and stem only)")

    def build(self, name: str, kwargs: dict[str, Any], pretrained: Any) -> nn.Module:
        raise NotImplementedError  # build_model calls the registered builder directly

    def canonical(self, name: str) -> str:
        return name

    def check_weights(self, name: str, kwargs: dict[str, Any], weights: str) -> None:
        check_weights_path(self, "builtin", name, kwargs, weights)


SOURCES.register("builtin")(BuiltinSource())
