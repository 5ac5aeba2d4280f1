"""baseline: the student on hard labels alone, the reference every method must beat."""

from __future__ import annotations

from typing import Literal

import torch

from compress.distill.base import (
    METHODS,
    ClassifierLossParams,
    DistillLoss,
    Features,
    MethodSpec,
    hard_label_ce,
)


class BaselineParams(ClassifierLossParams):
    name: Literal["baseline"] = "baseline"


class BaselineLoss(DistillLoss):
    def __init__(
        self, params: BaselineParams, shapes: object = None, student: object = None
    ) -> None:
        super().__init__()
        self.label_smoothing = params.label_smoothing

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None,
        labels: torch.Tensor,
        features: Features | None = None,
    ) -> torch.Tensor:
        return hard_label_ce(student, labels, self.label_smoothing)


METHODS.register("baseline")(
    MethodSpec(
        params=BaselineParams,
        build=BaselineLoss,
        uses_teacher=False,
        paper="-",
        summary="cross-entropy on hard labels only (label_smoothing)",
    )
)
