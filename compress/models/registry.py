"""Architectures by name: torchvision definitions with the stem adapted to the input size."""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from compress.registry import MODELS

# builder(num_classes, in_channels, width_mult, stem) -> nn.Module; stem is already resolved.
# A builder with ``fixed_width = True`` takes width_mult 1.0 only (the config says so).


def resolve_stem(stem: str, image_size: int) -> str:
    if stem != "auto":
        return stem
    return "cifar" if image_size < 64 else "imagenet"


def _resnet(factory: Callable[..., torchvision.models.ResNet]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, width_mult: float, stem: str) -> nn.Module:
        if width_mult != 1.0:
            raise ValueError("resnet width_mult must be 1.0 (torchvision's ResNet is fixed-width)")
        # zero-init the last BN of each block: every block starts as identity, which makes short
        # from-scratch training converge far faster (Goyal et al. 2017); loaded weights override it
        model = factory(num_classes=num_classes, zero_init_residual=True)
        if stem == "imagenet":
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        elif stem == "cifar":
            model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        else:  # compact: stride 4 like imagenet, with a 3x3 kernel suited to tiny images
            model.conv1 = nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model

    build.fixed_width = True  # type: ignore[attr-defined]
    return build


def _mobilenet_v2(num_classes: int, in_channels: int, width_mult: float, stem: str) -> nn.Module:
    model = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult)
    first = model.features[0][0]
    stride = 1 if stem == "cifar" else 2
    model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride, 1, bias=False)
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


MODELS.register("resnet18")(_resnet(torchvision.models.resnet18))
MODELS.register("resnet34")(_resnet(torchvision.models.resnet34))
MODELS.register("resnet50")(_resnet(torchvision.models.resnet50))
MODELS.register("mobilenet_v2")(_mobilenet_v2)
