"""Capture intermediate outputs by module path with forward hooks: no change to model code.

Feature methods (FitNets, attention transfer, RKD, contrastive) name layers such as the
teacher's ``layer3`` and the student's ``features.13``; a bad name is an error that suggests
the closest valid one and lists the model's top-level blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compress.errors import ConfigError, did_you_mean


class FeatureTaps:
    """Forward hooks storing the output of each named module in ``outputs`` at every forward."""

    def __init__(self, model: nn.Module, names: list[str], role: str) -> None:
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules or not name:
                blocks = ", ".join(n for n in modules if n and "." not in n)
                raise ConfigError(
                    f"{role} has no layer '{name}'{did_you_mean(name, modules)}; "
                    f"its top-level blocks: {blocks} (nest with dots, e.g. features.13)"
                )
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def store(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return store

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def tapped(model: nn.Module, names: list[str], role: str) -> Iterator[FeatureTaps]:
    taps = FeatureTaps(model, names, role)
    try:
        yield taps
    finally:
        taps.close()


@torch.no_grad()
def probe_shapes(
    model: nn.Module, names: list[str], example: torch.Tensor, role: str
) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of each named layer, from one forward pass in eval mode."""
    if not names:
        return {}
    was_training = model.training
    model.eval()
    with tapped(model, names, role) as taps:
        model(example)
        shapes = {n: tuple(taps.outputs[n].shape[1:]) for n in names}
    model.train(was_training)
    return shapes
