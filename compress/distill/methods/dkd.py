"""dkd: Zhao et al. 2022, "Decoupled Knowledge Distillation" (arXiv:2203.08679).

KD's KL splits into a target-class part (TCKD: binary target vs rest) and a non-target part
(NCKD: distribution over the other classes), weighted separately:

    L = ce_weight * CE + alpha * T^2 * KL(b_t || b_s) + beta * T^2 * KL(p~_t || p~_s)

b = [p_target, 1 - p_target] at temperature T; p~ is the softmax over non-target classes only.
Paper defaults: alpha = 1, beta = 8, T = 4, with the KD terms ramped up linearly over the
first 20 of 240 epochs; without that warm-up a student trained from scratch for a few hundred
steps can collapse to one class (seen here: 10% on Fashion-MNIST at lr 0.1). So the default
``warmup_steps`` is the same fraction of whatever run the stage plans: the first 1/12 of its
steps (39 of 469); set a number of steps to fix it, or 0 for none.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.data.module import UNLABELED
from compress.distill.base import (
    METHODS,
    DistillLoss,
    FeatureLossParams,
    Features,
    MethodSpec,
    hard_label_ce,
)


class DKDParams(FeatureLossParams):
    name: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, ge=0.0, description="weight of the target-class part (TCKD)")
    beta: float = Field(8.0, ge=0.0, description="weight of the non-target part (NCKD)")
    temperature: float = Field(4.0, gt=0.0, description="softening temperature T")
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="ramp the KD terms up linearly over this many steps; default: the first "
        "1/12 of the run (the paper's 20 of 240 epochs); 0: off",
    )


def dkd_parts(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each already scaled by T^2 and averaged over the batch.

    Computed in float32 at least, whatever the logits' dtype (fp16/bf16 autocast); the
    non-target softmax drops the target column instead of masking it with a huge negative
    number (which overflows half precision)."""
    wide = torch.promote_types(student.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays
    student, teacher = student.to(wide), teacher.to(wide)
    n, classes = student.shape
    target = F.one_hot(labels, classes).bool()
    p_s, p_t = F.softmax(student / t, 1), F.softmax(teacher / t, 1)
    b_s = torch.stack([p_s[target], p_s.masked_fill(target, 0).sum(1)], 1).clamp_min(1e-12)
    b_t = torch.stack([p_t[target], p_t.masked_fill(target, 0).sum(1)], 1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * t**2
    rest_s = F.log_softmax((student / t)[~target].view(n, classes - 1), 1)
    rest_t = F.log_softmax((teacher / t)[~target].view(n, classes - 1), 1)
    nckd = F.kl_div(rest_s, rest_t, log_target=True, reduction="batchmean") * t**2
    return tckd, nckd


class DKDLoss(DistillLoss):
    def __init__(self, params: DKDParams, shapes: object = None, student: object = None) -> None:
        super().__init__()
        self.params = params
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, student, teacher, labels, features: Features | None = None):
        p = self.params
        warmup = p.warmup_steps if p.warmup_steps is not None else round(self.total_steps / 12)
        # computed on the device (a host read every step would wait for the GPU)
        ramp = ((self.steps + 1).double() / warmup).clamp(max=1.0).float() if warmup else 1.0
        if self.training:
            self.steps += 1
        ce = hard_label_ce(student, labels, p.label_smoothing)
        # on data.unlabeled images the teacher's top class stands in for the label
        target = torch.where(labels == UNLABELED, teacher.argmax(1), labels)
        tckd, nckd = dkd_parts(student, teacher, target, p.temperature)
        return p.ce_weight * ce + ramp * (p.alpha * tckd + p.beta * nckd)


METHODS.register("dkd")(
    MethodSpec(
        params=DKDParams,
        build=DKDLoss,
        uses_teacher=True,
        paper="Zhao et al. 2022, arXiv:2203.08679",
        summary="decoupled target / non-target KD (alpha, beta, temperature)",
    )
)
