"""Helpers the training stages share: build a model for the data, train it, save and report it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from compress import distributed
from compress.config.base import ModelConfig, TrainConfig
from compress.data.module import DataModule
from compress.distill.config import DistillSettings
from compress.distill.train import DistillRun, TeacherFile, distill_student
from compress.io import write_json
from compress.models import ModelSpec, count_params, save_model
from compress.models.registry import resolve_stem
from compress.stages.base import StageContext, StageInput, StageResult
from compress.train.evaluate import evaluate
from compress.train.loop import FitResult


def model_spec(cfg: ModelConfig, data: DataModule) -> ModelSpec:
    return spec_for(cfg, data.num_classes, data.preprocess.channels, data.preprocess.size)


def spec_for(cfg: ModelConfig, num_classes: int, channels: int, image_size: int) -> ModelSpec:
    """The spec of ``cfg`` for data of this shape (known before the data is loaded)."""
    return ModelSpec(
        arch=cfg.arch,
        num_classes=num_classes,
        in_channels=channels,
        width_mult=cfg.width_mult,
        stem=resolve_stem(cfg.stem, image_size),
        kwargs=dict(cfg.kwargs),
    )


def finish_model(
    model: nn.Module,
    spec: ModelSpec,
    ctx: StageContext,
    role: str,
    history: list[dict[str, Any]],
    extra_metrics: dict[str, Any] | None = None,
) -> StageResult:
    """Evaluate on the held-out test split, save the model file and training history.

    Under torchrun every process evaluates its slice of the test split; rank 0 alone writes."""
    data = ctx.data()
    started = time.perf_counter()
    metrics: dict[str, Any] = evaluate(model, data, data.test, ctx.device)
    metrics["eval_seconds"] = round(time.perf_counter() - started, 2)
    metrics["params"] = count_params(model)
    metrics["test_images"] = len(data.test)
    if data.val is not None:  # the kept weights on the validation split: what tuning reads
        metrics["val_top1"] = evaluate(model, data, data.val, ctx.device)["top1"]
    if history:
        metrics["epochs"] = len(history)
        metrics["train_seconds"] = round(sum(h["seconds"] for h in history), 2)
        if "loss" in history[-1]:  # near its floor or still falling: did training converge?
            metrics["train_loss"] = round(float(history[-1]["loss"]), 4)
    if data.skipped:  # data.skip_corrupt left these files out of every split
        metrics["corrupt_images_skipped"] = len(data.skipped)
        metrics["corrupt_images"] = data.skipped[:20]
    metrics.update(extra_metrics or {})
    model_path = ctx.stage_dir / "model.pt"
    meta = {
        "role": role,
        "labels": data.classes,
        "preprocess": data.preprocess.metadata(),
        "metrics": metrics,
    }
    history_path = ctx.stage_dir / "history.json"
    if distributed.is_main():
        save_model(model.cpu(), spec, model_path, meta)
        write_json(history_path, history)
        (ctx.stage_dir / "checkpoint.pt").unlink(missing_ok=True)  # training state, not needed
    return StageResult(metrics=metrics, artifacts={"model": model_path, "history": history_path})


def checkpoint_path(ctx: StageContext) -> Path:
    return ctx.stage_dir / "checkpoint.pt"


def teacher_inputs(ctx: StageContext) -> list[StageInput]:
    """The stage's teacher input, then any further ``teachers`` (keys teacher.2, teacher.3...)."""
    keys = ["teacher"] + [f"teacher.{i}" for i in range(2, len(ctx.inputs) + 2)]
    return [ctx.inputs[k] for k in keys if k in ctx.inputs]


def distill_in_stage(
    student: nn.Module,
    settings: DistillSettings,
    train: TrainConfig,
    ctx: StageContext,
    label: str,
    seed: int | None = None,
) -> FitResult:
    """``distill_student`` from the stage's teacher inputs, writing in the stage's folder."""
    teachers = [
        TeacherFile(t.path(), t.entry["artifacts"]["model"]["sha256"]) for t in teacher_inputs(ctx)
    ]
    where = DistillRun(
        device=ctx.device,
        checkpoint=checkpoint_path(ctx),
        fingerprint=ctx.fingerprint,
        tensorboard_dir=ctx.stage_dir / "tensorboard",
        cache_dir=ctx.run_dir / "cache",
    )
    return distill_student(student, settings, train, ctx.data(), teachers, where, label, seed)
