"""Train a student with a distillation method: the step every distilling stage shares.

When the training inputs are fixed (``augment: none``), the teacher's logits for the training
split are computed once per run and reused by every epoch and every stage that distils from the
same teacher on the same data: identical numbers, and the teacher's forward pass (the dearest
part of distillation on a CPU) is paid once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compress.config.base import TrainConfig
from compress.distill.base import METHODS
from compress.distill.config import DistillSettings
from compress.io import load_torch, save_torch, sha256_json
from compress.models import load_model
from compress.stages.base import StageContext
from compress.stages.common import checkpoint_path
from compress.train.evaluate import predict
from compress.train.loop import FitResult, fit
from compress.ui import console

TeacherLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def distill_student(
    student: nn.Module, settings: DistillSettings, train: TrainConfig, ctx: StageContext, label: str
) -> FitResult:
    """Train ``student`` in place from the stage's teacher input with ``settings.method``."""
    student.to(ctx.device).to(memory_format=torch.channels_last)
    loss_fn = METHODS.get(settings.method.name).build(settings.method).to(ctx.device)
    teacher_logits_for = teacher_source(settings, train, ctx)

    def step_loss(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
        logits = student(x)
        teacher_logits = teacher_logits_for(x, rows) if teacher_logits_for else None
        return logits, loss_fn(logits, teacher_logits, y)

    return fit(
        student,
        step_loss,
        ctx.data(),
        train,
        device=ctx.device,
        checkpoint=checkpoint_path(ctx),
        fingerprint=ctx.fingerprint,
        label=label,
        augment=train.augment,
        extra_params=[p for p in loss_fn.parameters() if p.requires_grad],
        tensorboard_dir=ctx.stage_dir / "tensorboard",
    )


def teacher_source(
    settings: DistillSettings, train: TrainConfig, ctx: StageContext
) -> TeacherLogits | None:
    """(x, rows) -> teacher logits; cached over the train split when the inputs are fixed."""
    if not settings.uses_teacher():
        return None
    teacher, _, _ = load_model(ctx.input("teacher").path())
    teacher.to(ctx.device).to(memory_format=torch.channels_last).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if train.augment != "none" or not settings.cache_teacher:

        def live(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return teacher(x)

        return live

    cached = _cached_logits(teacher, ctx)
    return lambda x, rows: cached[rows].to(x.device)


def _cached_logits(teacher: nn.Module, ctx: StageContext) -> torch.Tensor:
    """Teacher logits of the training split, shared by stages through the run's cache folder."""
    split_keys = {"dataset", "root", "image_size", "channels", "mean", "std", "train_subset",
                  "val_split"}  # fmt: skip
    data_cfg = ctx.pipeline.data.model_dump(mode="json", include=split_keys)
    key = sha256_json({"teacher": ctx.input("teacher").entry["artifacts"]["model"]["sha256"],
                       "data": data_cfg, "seed": ctx.pipeline.seed})  # fmt: skip
    path = ctx.run_dir / "cache" / f"teacher_logits-{key[:16]}.pt"
    if path.exists():
        stored = load_torch(path)
        if stored.get("key") == key:
            console.print(f"  reusing cached teacher logits ({path.name})")
            return stored["logits"]
    data = ctx.data()
    console.print(f"  computing teacher logits once for {len(data.train):,} training images")
    logits = predict(teacher, data, data.train, ctx.device)
    save_torch({"key": key, "logits": logits}, path)
    return logits
