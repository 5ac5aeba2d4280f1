"""kd: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    L = alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

Forward KL from teacher to student; the T^2 factor keeps the soft-target gradients at the same
scale as the hard-label ones when T changes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.distill.base import (
    METHODS,
    ClassifierLossParams,
    DistillLoss,
    Features,
    MethodSpec,
)


class KDParams(ClassifierLossParams):
    name: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0.0, description="softening temperature T")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label CE")

    def hard_label_weight(self) -> float:
        return self.alpha


def kd_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


class KDLoss(DistillLoss):
    def __init__(self, params: KDParams, shapes: object = None, student: object = None) -> None:
        super().__init__()
        self.params = params

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None,
        labels: torch.Tensor,
        features: Features | None = None,
    ) -> torch.Tensor:
        assert teacher is not None, "kd needs teacher logits"
        p = self.params
        ce = F.cross_entropy(student, labels, label_smoothing=p.label_smoothing)
        return p.alpha * ce + (1.0 - p.alpha) * kd_divergence(student, teacher, p.temperature)


METHODS.register("kd")(
    MethodSpec(
        params=KDParams,
        build=KDLoss,
        uses_teacher=True,
        paper="Hinton et al. 2015, arXiv:1503.02531",
        summary="soft targets at temperature T (temperature, alpha)",
    )
)
