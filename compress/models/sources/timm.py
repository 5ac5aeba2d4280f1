"""``timm:<name>``: any timm model; ``pretrained: true`` fetches timm's weights as timm does.

timm is the optional extra ``compress[timm]``; without it the name fails validation with the
install line.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from compress.errors import CheckpointError, did_you_mean
from compress.models.sources import SOURCES, is_weights_file
from compress.models.weights import check_weights_path

INSTALL = "pip install 'compress[timm]'"


def available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


class TimmSource:
    adapts = True

    def canonical(self, name: str) -> str:
        return f"timm:{name}"

    def check_weights(self, name: str, kwargs: dict[str, Any], weights: str) -> None:
        if not is_weights_file(weights):
            raise ValueError(
                f"weights '{weights}': timm:{name} takes a state_dict file path here "
                "(or pretrained: true)"
            )
        check_weights_path(self, "timm", name, kwargs, weights)

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        if not available():
            raise ValueError(f"timm:{name} needs timm, which is not installed: {INSTALL}")
        if name not in names():
            raise ValueError(
                f"unknown timm model '{name}'{did_you_mean(name, names())}; list them with "
                "python -c \"import timm; print(timm.list_models('*NAME*'))\""
            )
        for key in ("pretrained", "num_classes", "in_chans"):
            if key in kwargs:
                raise ValueError(f"kwargs.{key}: set by the model block and the dataset instead")

    def build(self, name: str, kwargs: dict[str, Any], pretrained: Any) -> nn.Module:
        import timm

        try:
            return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
        except (OSError, RuntimeError) as exc:  # hub download errors when offline
            if not pretrained:
                raise
            raise CheckpointError(
                f"cannot fetch timm:{name} pretrained weights ({str(exc).splitlines()[0]}); "
                "offline, save them where HF_HUB_CACHE points, or give pretrained: PATH "
                "to a state_dict file"
            ) from exc


SOURCES.register("timm")(TimmSource())
