"""The method registry and the contract a distillation method fulfils.

A method is a params model (pydantic, validated with the pipeline) and a loss module built from
it. The loss sees the student's and the teacher's logits and the labels and returns a scalar;
methods that need no teacher (baseline) say so, and the distill stage then skips the teacher.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from compress.config.base import StrictModel
from compress.registry import Registry


class MethodParams(StrictModel):
    """Base of every method's params; ``name`` selects the method."""

    name: str = Field(description="the registered method")


class ClassifierLossParams(MethodParams):
    """Hard-label settings every method that uses cross-entropy shares."""

    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="label smoothing of the hard-label cross-entropy"
    )


@dataclass(frozen=True)
class MethodSpec:
    params: type[MethodParams]
    build: type[nn.Module]  # constructed with the params model
    uses_teacher: bool
    paper: str
    summary: str


METHODS: Registry[MethodSpec] = Registry("distillation method")


class DistillLoss(nn.Module):
    """Loss of a student batch: ``forward(student_logits, teacher_logits, labels) -> scalar``."""

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def load_methods() -> None:
    """Import every module in compress.distill.methods so each registers itself."""
    from compress.distill import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")
