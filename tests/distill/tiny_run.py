"""A tiny distillation as the distill stage runs it: a saved teacher, Fashion-MNIST-format data
and one ``distill_student`` call, for the tests that need the whole step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.config.base import DataConfig, TrainConfig
from compress.data.module import DataModule
from compress.distill.config import DistillSettings
from compress.distill.train import DistillRun, TeacherFile, distill_student
from compress.models import ModelSpec, build_model, save_model

SPEC = ModelSpec("mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.25, stem="cifar")


def save_teacher(root: Path) -> None:
    """A random tiny teacher at ``root/teacher.pt``, where ``distil`` reads it."""
    save_model(build_model(SPEC), SPEC, root / "teacher.pt", {})


def distil(
    root: Path,
    work: Path,
    method: dict[str, Any],
    train: TrainConfig,
    *,
    cache_teacher: bool = True,
    cache: Path | None = None,
    **data: Any,
) -> nn.Module:
    """A student distilled from ``root/teacher.pt`` on the data under ``root`` (12 px, batch 8,
    ``data`` overriding), checkpoint in ``work``, teacher outputs cached in ``cache`` (default
    ``work/cache``). The student's initial weights are the same on every call."""
    module = DataModule(DataConfig(root=root, download=False, image_size=12, batch_size=8, **data),
                        seed=0)  # fmt: skip
    torch.manual_seed(1)
    student = build_model(SPEC)
    settings = DistillSettings(method=method, cache_teacher=cache_teacher)
    where = DistillRun(torch.device("cpu"), work / "ckpt.pt", "fp", None, cache or work / "cache")
    teacher = TeacherFile(root / "teacher.pt", "sha-of-teacher")
    distill_student(student, settings, train, module, [teacher], where, method["name"], seed=0)
    return student
