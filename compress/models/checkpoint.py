"""Our model file: an architecture spec plus a state_dict, loadable with weights_only=True.

A stage never pickles a module: it saves ``{"format", "spec", "state_dict", "meta"}`` of plain
types, and the next stage rebuilds the architecture from the spec. User checkpoints may be a plain
torchvision-style state_dict or a dict wrapping one (``state_dict``/``model`` keys, ``module.``
prefixes from DDP).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import CheckpointError
from compress.io import load_torch, save_torch
from compress.models.adapt import adapt
from compress.models.sources import source_of
from compress.models.weights import FORMAT, extract_state_dict, state_mismatch
from compress.quant.prepare import QuantSpec, quantize_model
from compress.registry import MODELS
from compress.ui import console


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture before loading its weights."""

    arch: str
    num_classes: int
    in_channels: int
    width_mult: float = 1.0
    stem: str = "cifar"
    pruned: bool = False  # layer widths come from the state_dict (see resize_to_state_dict)
    quant: dict[str, Any] | None = None  # fake-quantized with these settings (compress.quant)
    kwargs: dict[str, Any] = field(default_factory=dict)  # the source's builder arguments

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(
    spec: ModelSpec, weights: str | Path | bool | None = None, log: bool = False
) -> nn.Module:
    """The architecture of ``spec`` adapted to its data; ``weights``: a library's pretrained
    weights name (torchvision enum name, timm ``True``) or a local state_dict file, loaded
    before the head is replaced. ``log`` prints what adaptation replaced (first builds only)."""
    source, name = source_of(spec.arch)
    if not source.adapts:
        model = MODELS.get(name)(spec.num_classes, spec.in_channels, spec.width_mult, spec.stem)
        if weights is not None:
            path = Path(weights)
            load_state_dict_checked(model, extract_state_dict(load_torch(path), path), path,
                                    spec.arch)  # fmt: skip
        return model
    local = weights is not None and _is_file_reference(weights)
    model = source.build(name, spec.kwargs, None if local or weights is None else weights)
    if not local:
        changes = adapt(model, spec.arch, spec.num_classes, spec.in_channels, spec.stem)
    else:  # a file of the library's layout, or of the adapted model (a fine-tuned one)
        path = Path(weights)  # type: ignore[arg-type]
        state = extract_state_dict(load_torch(path), path)
        adapted = copy.deepcopy(model)
        changes = adapt(adapted, spec.arch, spec.num_classes, spec.in_channels, spec.stem)
        if _misfits(adapted, state) == 0:
            model = adapted
            load_state_dict_checked(model, state, path, spec.arch)
        else:
            load_state_dict_checked(model, state, path, spec.arch)
            changes = adapt(model, spec.arch, spec.num_classes, spec.in_channels, spec.stem)
    if log and changes:
        console.print(f"  {spec.arch}: " + "; ".join(changes))
    return model


def _is_file_reference(weights: str | Path | bool) -> bool:
    if isinstance(weights, Path):
        return True
    return isinstance(weights, str) and ("/" in weights or Path(weights).suffix != "")


def _misfits(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    expected = model.state_dict()
    return len(set(expected) ^ set(state)) + sum(
        1 for k, v in expected.items() if k in state and state[k].shape != v.shape
    )


def save_model(model: nn.Module, spec: ModelSpec, path: Path, meta: dict[str, Any]) -> None:
    """``meta`` carries what downstream consumers need: labels, preprocess, metrics."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"format": FORMAT, "spec": asdict(spec), "state_dict": state, "meta": meta}, path)


def load_model(path: Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    payload = load_torch(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a compress model file (format {FORMAT})")
    spec = ModelSpec.from_dict(payload["spec"])
    model = build_model(spec)
    if spec.pruned:
        resize_to_state_dict(model, payload["state_dict"])
    if spec.quant is not None:  # rebuilt by the same deterministic transformation
        model = quantize_model(model, QuantSpec.from_dict(spec.quant))
    load_state_dict_checked(model, payload["state_dict"], path, spec.arch)
    return model, spec, payload.get("meta", {})


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Load strictly; on mismatch name the missing, unexpected and mis-shaped keys."""
    missing, unexpected, wrong = state_mismatch(model.state_dict(), state)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(
            f"{path} does not fit architecture '{arch}' (checkpoint vs model): " + "; ".join(parts)
        )
    model.load_state_dict(state)


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each conv, batch-norm and linear layer the width its saved weights have.

    A structurally pruned model is saved as its original architecture's spec plus a smaller
    state_dict; rebuilding the architecture and narrowing its layers to the saved shapes restores
    it without pickling any module. Depthwise convs stay depthwise. A quantized model's state has
    no BatchNorm (folded into the convs): each BatchNorm then takes the width of the conv before it.
    """
    previous_conv_out: int | None = None
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None:
            if isinstance(module, nn.BatchNorm2d) and previous_conv_out not in (
                None,
                module.num_features,
            ):
                _replace(
                    model, name, nn.BatchNorm2d(previous_conv_out, module.eps, module.momentum)
                )
            continue
        if isinstance(module, nn.Conv2d):
            previous_conv_out = weight.shape[0]
            depthwise = module.groups > 1 and module.groups == module.in_channels
            groups = weight.shape[0] if depthwise else module.groups
            if weight.shape != module.weight.shape or groups != module.groups:
                replacement: nn.Module = nn.Conv2d(
                    weight.shape[1] * groups, weight.shape[0], module.kernel_size,
                    module.stride, module.padding, module.dilation, groups,
                    bias=module.bias is not None,
                )  # fmt: skip
                _replace(model, name, replacement)
        elif isinstance(module, nn.BatchNorm2d) and weight.shape[0] != module.num_features:
            _replace(model, name, nn.BatchNorm2d(weight.shape[0], module.eps, module.momentum))
        elif isinstance(module, nn.Linear) and weight.shape != module.weight.shape:
            replacement = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
            _replace(model, name, replacement)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
