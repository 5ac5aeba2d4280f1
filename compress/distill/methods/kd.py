"""kd: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    L = alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

Forward KL from teacher to student; the T^2 factor keeps the soft-target gradients at the same
scale as the hard-label ones when T changes.

Temperature annealing (``temperature_schedule: linear | cosine``) moves T from ``temperature``
at the first training step to ``final_temperature`` at the last; each step uses its own T in
both the softmax and the T^2 factor:

    linear: T(s) = T0 + (T1 - T0) * s / (S - 1)
    cosine: T(s) = T1 + (T0 - T1) * (1 + cos(pi * s / (S - 1))) / 2

Several teachers (``teachers:`` on the distill stage): ``teacher`` holds their logits stacked
(teachers x batch x classes) and p_t is the average of the teachers' probabilities at T.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from compress.distill.base import (
    METHODS,
    ClassifierLossParams,
    DistillLoss,
    Features,
    MethodSpec,
    hard_label_ce,
    schedule_progress,
)


class KDParams(ClassifierLossParams):
    name: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0.0, description="softening temperature T")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label CE")
    temperature_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="anneal T from temperature to final_temperature over the training steps",
    )
    final_temperature: float | None = Field(
        None, gt=0.0, description="T at the last step; needed by a linear or cosine schedule"
    )

    @model_validator(mode="after")
    def _final_temperature_with_a_schedule(self) -> KDParams:
        if self.temperature_schedule != "constant" and self.final_temperature is None:
            raise ValueError(
                f"temperature_schedule {self.temperature_schedule} needs final_temperature"
            )
        return self

    def hard_label_weight(self) -> float:
        return self.alpha

    def temperature_at(self, step: int | torch.Tensor, total_steps: int) -> float | torch.Tensor:
        """T at a 0-based training step of ``total_steps`` (a tensor for a device step counter)."""
        if self.temperature_schedule == "constant" or self.final_temperature is None:
            return self.temperature
        t0, t1 = self.temperature, self.final_temperature
        progress = schedule_progress(step, total_steps)
        if self.temperature_schedule == "linear":
            return t0 + (t1 - t0) * progress
        cos = torch.cos if isinstance(progress, torch.Tensor) else math.cos
        return t1 + (t0 - t1) * (1.0 + cos(math.pi * progress)) / 2.0


def kd_divergence(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch.

    ``teacher`` is one teacher's logits (batch x classes) or several stacked (teachers x batch x
    classes); p_teacher is then the mean of their probabilities at T.
    """
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    if teacher.dim() == 3:  # log of the mean probability, computed stably
        log_p_teacher = torch.logsumexp(log_p_teacher, dim=0) - math.log(teacher.shape[0])
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


class KDLoss(DistillLoss):
    def __init__(self, params: KDParams, shapes: object = None, student: object = None) -> None:
        super().__init__()
        self.params = params
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None,
        labels: torch.Tensor,
        features: Features | None = None,
    ) -> torch.Tensor:
        assert teacher is not None, "kd needs teacher logits"
        p = self.params
        if p.temperature_schedule != "constant":
            assert self.total_steps > 0, "a temperature schedule needs plan(total_steps)"
        # from the step counter on the device: no host read, which would wait for the GPU
        temperature = p.temperature_at(self.steps, self.total_steps)
        if self.training:
            self.steps += 1
        ce = hard_label_ce(student, labels, p.label_smoothing)
        return p.alpha * ce + (1.0 - p.alpha) * kd_divergence(student, teacher, temperature)


METHODS.register("kd")(
    MethodSpec(
        params=KDParams,
        build=KDLoss,
        uses_teacher=True,
        paper="Hinton et al. 2015, arXiv:1503.02531",
        summary="soft targets at temperature T (temperature, alpha)",
    )
)
