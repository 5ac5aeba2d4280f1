"""``torchvision:<name>``: any classification builder of ``torchvision.models``.

``weights: IMAGENET1K_V1`` (a name of the builder's weights enum) downloads into the torch hub
cache; offline, the error says which file to put where.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from torch import nn

from compress.errors import CheckpointError, did_you_mean
from compress.models.sources import SOURCES, is_weights_file
from compress.models.weights import check_weights_path


@functools.cache
def names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def weights_enum(name: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(name)


def check_weights(name: str, weights: str) -> None:
    """A weights name must be one of the builder's enum members."""
    members = [m.name for m in weights_enum(name)] + ["DEFAULT"]
    if weights not in members:
        raise ValueError(
            f"torchvision:{name} has no weights '{weights}'{did_you_mean(weights, members)}; "
            f"valid: {', '.join(members)}, or a path to a state_dict file"
        )


def cached_file(weights: Any) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


class TorchvisionSource:
    adapts = True

    def canonical(self, name: str) -> str:
        return f"torchvision:{name}"

    def check_weights(self, name: str, kwargs: dict[str, Any], weights: str) -> None:
        if is_weights_file(weights):
            check_weights_path(self, "torchvision", name, kwargs, weights)
        else:
            check_weights(name, weights)

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        if name not in names():
            raise ValueError(
                f"unknown torchvision classification model '{name}'"
                f'{did_you_mean(name, names())}; list them with python -c "import torchvision; '
                'print(torchvision.models.list_models(module=torchvision.models))"'
            )
        for key in ("weights", "num_classes"):
            if key in kwargs:
                raise ValueError(
                    f"kwargs.{key}: set it with the model block's "
                    f"{'weights' if key == 'weights' else 'dataset'} instead"
                )

    def build(self, name: str, kwargs: dict[str, Any], pretrained: Any) -> nn.Module:
        import torchvision

        if pretrained is None:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        weights = weights_enum(name)[pretrained] if pretrained != "DEFAULT" else None
        weights = weights or weights_enum(name).DEFAULT
        target = cached_file(weights)
        try:
            return torchvision.models.get_model(name, weights=weights, **kwargs)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            if target.is_file() and "hash" not in str(exc).lower():
                raise
            raise CheckpointError(
                f"cannot download torchvision:{name} weights {weights.name} ({exc}); offline, "
                f"put {weights.url.rsplit('/', 1)[-1]} (from {weights.url}) at {target}"
            ) from exc


SOURCES.register("torchvision")(TorchvisionSource())
