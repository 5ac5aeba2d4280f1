"""Fit a library model to the data: classifier head to the class count, first conv to the
channel count, and the stem to small images.

The same rules run when a model is first built (the lines they return go to the run log) and
when a later stage rebuilds it from its spec, so a model file needs no pickled module. For
pretrained RGB weights on grey images the first conv's kernels are summed over the colour
channels (a grey image then gives what the RGB network saw for the same grey in all three).
"""

from __future__ import annotations

import torch
from torch import nn

from compress.errors import CompressError

STEM_MODULES = 4  # a stem max-pool comes before the 4th conv (timm's deep stems have 3)


def describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features})"
    if isinstance(module, nn.Conv2d):
        k, s = module.kernel_size, module.stride
        return f"Conv2d({module.in_channels}->{module.out_channels}, {k[0]}x{k[1]}/{s[0]})"
    return type(module).__name__


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise CompressError(f"{type(model).__name__} has no Conv2d: not an image classifier")


def head(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CompressError(
            f"{type(model).__name__} has no Linear classifier to adapt to the class count; "
            "end the model with an nn.Linear"
        )
    return linears[-1]


def stem_pool(model: nn.Module) -> str | None:
    """The max-pool of a ResNet-style stem: the first MaxPool2d, before the 4th conv."""
    convs = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            convs += 1
            if convs >= STEM_MODULES:
                return None
        elif isinstance(module, nn.MaxPool2d):
            return name
    return None


def is_patch_embedding(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == conv.stride and conv.stride[0] > 2


def resolve_stem(model: nn.Module, stem: str, image_size: int) -> str:
    """``auto``: cifar below 64 px, except for patch-embedding models (ViT/Swin): imagenet."""
    if stem != "auto":
        return stem
    return "imagenet" if is_patch_embedding(first_conv(model)[1]) or image_size >= 64 else "cifar"


def adapt(model: nn.Module, label: str, num_classes: int, in_channels: int, stem: str) -> list[str]:
    """Adapt ``model`` in place; returns what was replaced, as 'path Old -> New' strings."""
    changes = []
    name, linear = head(model)
    if linear.out_features != num_classes:
        new = nn.Linear(linear.in_features, num_classes, bias=linear.bias is not None)
        changes.append(f"{name} {describe(linear)} -> {describe(new)}")
        set_module(model, name, new)
    name, conv = first_conv(model)
    stride = conv.stride
    if stem != "imagenet":
        if is_patch_embedding(conv):
            raise CompressError(
                f"{label}: stem '{stem}' does not apply: its first layer {name} is a "
                f"{conv.kernel_size[0]}x{conv.kernel_size[1]}/{conv.stride[0]} patch embedding, "
                "not a conv stem; use stem: imagenet (and the image size it expects)"
            )
        pool = stem_pool(model)
        if stem == "compact" and pool is None:
            raise CompressError(
                f"{label}: stem 'compact' removes a stem max-pool, and this model has none "
                f"(its stem is {name} {describe(conv)}); use stem: cifar (stride 1) or imagenet"
            )
        if pool is not None:
            set_module(model, pool, nn.Identity())
            changes.append(f"{pool} MaxPool2d -> Identity")
        if stem == "cifar":
            stride = (1, 1)
    if conv.in_channels != in_channels or stride != conv.stride:
        new = nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, stride, conv.padding,
            conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )  # fmt: skip
        with torch.no_grad():
            weight = conv.weight
            if conv.in_channels != in_channels:  # sum over colours, spread over the new inputs
                scale = conv.in_channels / in_channels  # 1 channel: the sum over RGB
                weight = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * scale
            new.weight.copy_(weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        changes.append(f"{name} {describe(conv)} -> {describe(new)}")
        set_module(model, name, new)
    return changes
