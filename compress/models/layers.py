"""Every module path of a model with its output shape and multiply-accumulates, from one forward
pass with hooks: the names feature-distillation methods and prune.ignored_layers take."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Layer:
    path: str
    kind: str
    shape: tuple[int, ...] | None  # per-sample output shape; None: not a single tensor
    macs: int  # of this module and everything inside it


def _own_macs(module: nn.Module, output: torch.Tensor) -> int:
    per_sample = output[0].numel()
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return per_sample * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


@torch.no_grad()
def list_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """In definition order; ``example`` is one batch (its first image is counted)."""
    found: dict[str, Layer] = {}
    leaves: dict[str, int] = {}

    def hook(path: str):
        def record(module: nn.Module, inputs: object, output: object) -> None:
            tensor = output if torch.is_tensor(output) else None
            shape = tuple(tensor.shape[1:]) if tensor is not None else None
            if path not in found:
                found[path] = Layer(path, type(module).__name__, shape, 0)
                if tensor is not None:
                    leaves[path] = _own_macs(module, tensor)

        return record

    named = [(n, m) for n, m in model.named_modules() if n]
    handles = [m.register_forward_hook(hook(n)) for n, m in named]
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for path, macs in leaves.items():
        parts = path.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix in found:
                found[prefix].macs += macs
    return [found[n] for n, _ in named if n in found]
