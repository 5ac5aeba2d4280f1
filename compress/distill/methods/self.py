"""self: self-distillation from an exponential moving average of the student (mean teacher,
Tarvainen & Valpola 2017, arXiv:1703.01780), with no external teacher.

    theta_ema <- d * theta_ema + (1 - d) * theta,   d_t = min(decay, (1 + t) / (10 + t))
    L = alpha * CE + (1 - alpha) * T^2 * KL(p_ema || p_student)

The warm-up of d lets the EMA follow the student early on instead of staying at its random
initialisation. Born-again generations (Furlanello et al. 2018) need no method of their own:
chain distill stages, each with ``input:`` naming the previous one as its teacher.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compress.distill.base import (
    METHODS,
    ClassifierLossParams,
    DistillLoss,
    Features,
    MethodSpec,
    hard_label_ce,
)
from compress.distill.methods.kd import kd_divergence


class SelfParams(ClassifierLossParams):
    name: Literal["self"] = "self"
    decay: float = Field(0.999, gt=0.0, lt=1.0, description="EMA decay (after warm-up)")
    temperature: float = Field(4.0, gt=0.0, description="softening temperature T")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label CE")

    def hard_label_weight(self) -> float:
        return self.alpha


class SelfLoss(DistillLoss):
    def __init__(self, params: SelfParams, shapes: object = None, student: object = None) -> None:
        super().__init__()
        assert isinstance(student, nn.Module), "self-distillation needs the student"
        self.params = params
        self.ema = copy.deepcopy(student).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self._student = [student]  # a reference, not a submodule: its weights are the model's
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_ema(self) -> None:
        student = self._student[0]
        # d_t on the device: a host read of the counter every step would wait for the GPU
        updates = self.updates.double()
        decay = ((1.0 + updates) / (10.0 + updates)).clamp(max=self.params.decay)
        for ema, live in zip(self.ema.parameters(), student.parameters(), strict=True):
            ema.lerp_(live.detach(), (1.0 - decay).to(ema.dtype))  # d * ema + (1 - d) * live
        for ema, live in zip(self.ema.buffers(), student.buffers(), strict=True):
            ema.copy_(live)
        self.updates += 1

    def forward(self, student, teacher, labels, features: Features | None = None):
        p = self.params
        self.update_ema()  # follows the weights of the previous optimizer step
        with torch.no_grad():
            ema_logits = self.ema(features.inputs)
        ce = hard_label_ce(student, labels, p.label_smoothing)
        return p.alpha * ce + (1 - p.alpha) * kd_divergence(student, ema_logits, p.temperature)


METHODS.register("self")(
    MethodSpec(
        params=SelfParams,
        build=SelfLoss,
        uses_teacher=False,
        paper="Tarvainen & Valpola 2017, arXiv:1703.01780 (EMA teacher)",
        summary="distil from an EMA of the student itself (decay, temperature, alpha)",
    )
)
