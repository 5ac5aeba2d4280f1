"""The method registry and the contract a distillation method fulfils.

A method is a params model (pydantic, validated with the pipeline) and a loss module built from
it. The loss sees the student's and the teacher's logits, the labels and, for feature methods,
the outputs of the layers its params name (captured with forward hooks, see ``features.py``).
Methods that need no teacher (baseline) say so, and the stage then loads no teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compress.config.base import StrictModel
from compress.data.module import UNLABELED
from compress.registry import METHODS


class MethodParams(StrictModel):
    """Base of every method's params; ``name`` selects the method."""

    name: str = Field(description="the registered method")
    weight: float = Field(1.0, ge=0.0, description="weight of this method's loss in a mix")

    def layers(self) -> tuple[list[str], list[str]]:
        """Module paths whose outputs the loss needs: (student layers, teacher layers)."""
        return [], []

    def hard_label_weight(self) -> float:
        """How much hard-label cross-entropy the loss contains (a mix keeps it in one part)."""
        return 1.0


class ClassifierLossParams(MethodParams):
    """Hard-label settings every method that uses cross-entropy shares."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="on the hard-label CE")


class FeatureLossParams(ClassifierLossParams):
    """Feature methods add their term to ``ce_weight * CE``; in a mix only one part keeps CE."""

    ce_weight: float = Field(1.0, ge=0.0, description="weight of the hard-label cross-entropy")

    def hard_label_weight(self) -> float:
        return self.ce_weight


class LayerPair(StrictModel):
    student: str = Field(..., description="student module path, e.g. features.13")
    teacher: str = Field(..., description="teacher module path, e.g. layer3")


@dataclass
class Features:
    """Captured layer outputs of one batch, by module path."""

    student: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: torch.Tensor | None = None  # the batch, for methods that run models of their own


@dataclass(frozen=True)
class FeatureShapes:
    """Per-sample output shapes (C, H, W or C) of the captured layers, probed once."""

    student: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teacher: dict[str, tuple[int, ...]] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """``forward(student_logits, teacher_logits, labels, features) -> scalar``.

    ``total_steps`` is the number of optimiser steps the trainer plans (set through ``plan``
    before training; 0 when unknown): losses with a schedule (KD temperature annealing, mutual
    learning's ramp) read it together with a ``steps`` buffer they count themselves, so a
    resumed run continues the schedule where it stopped.
    """

    total_steps: int = 0

    def plan(self, total_steps: int) -> None:
        """Tell this loss and every loss inside it (the parts of a mix) the training length."""
        for module in self.modules():
            if isinstance(module, DistillLoss):
                module.total_steps = total_steps

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None,
        labels: torch.Tensor,
        features: Features | None = None,
    ) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class MethodSpec:
    params: type[MethodParams]
    build: Callable[..., DistillLoss]  # build(params, shapes, student being trained)
    uses_teacher: bool
    paper: str
    summary: str


def hard_label_ce(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy on the labelled rows of a batch, averaged over them (0 when there are none);
    rows of ``data.unlabeled`` images (label UNLABELED) only get a method's distillation terms."""
    if not bool((labels != UNLABELED).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, ignore_index=UNLABELED)


def schedule_progress(step: int | torch.Tensor, total_steps: int) -> float | torch.Tensor:
    """Fraction of training done at a 0-based step: 0 at the first step, 1 at the last. A step
    counter on the device gives a device tensor, so a schedule needs no host read."""
    fraction = step / max(1, total_steps - 1)
    return fraction.clamp(max=1.0) if isinstance(fraction, torch.Tensor) else min(1.0, fraction)


def pooled(feature: torch.Tensor) -> torch.Tensor:
    """A batch of embeddings from a layer output: global average pool of maps, else flatten."""
    return feature.mean((2, 3)) if feature.dim() == 4 else feature.flatten(1)


def embedding_size(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) == 3 else int(torch.Size(shape).numel())


def load_methods() -> None:
    """Import every method module (``compress.distill.methods``, then mix) so each registers."""
    METHODS.load()
