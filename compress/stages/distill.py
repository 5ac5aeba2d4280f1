"""distill: train the student from the teacher with a registered distillation method.

When the training inputs are fixed (``augment: none``), the teacher's logits for the training
split are computed once and reused every epoch: identical numbers, and the teacher's forward
pass (the dearest part of distillation on a CPU) is paid once instead of once per epoch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import torch
from pydantic import Field, field_validator

from compress.config.base import ModelConfig, TrainConfig
from compress.distill import METHODS, load_methods
from compress.io import load_torch, save_torch
from compress.models import build_model, load_model
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.common import checkpoint_path, finish_model, model_spec
from compress.train.evaluate import predict
from compress.train.loop import fit
from compress.ui import console

load_methods()
MethodConfig = Annotated[
    Union[tuple(spec.params for _, spec in METHODS.items())],  # noqa: UP007
    Field(discriminator="name"),
]


class DistillConfig(TrainConfig, StageConfig):
    type: Literal["distill"] = "distill"
    student: ModelConfig = Field(
        default_factory=lambda: ModelConfig(arch="mobilenet_v2"), description="the architecture"
    )
    method: MethodConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: METHODS.get("kd").params(),
        description="a method name (kd) or {name: kd, temperature: 4, alpha: 0.5}",
    )
    cache_teacher: bool = Field(
        True, description="reuse teacher logits across epochs when augment is none"
    )

    @field_validator("method", mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def _uses_teacher(cfg: DistillConfig) -> bool:
    return METHODS.get(cfg.method.name).uses_teacher


def run(cfg: DistillConfig, ctx: StageContext) -> StageResult:
    data = ctx.data()
    spec = model_spec(cfg.student, data)
    student = build_model(spec).to(ctx.device).to(memory_format=torch.channels_last)
    loss_fn = METHODS.get(cfg.method.name).build(cfg.method).to(ctx.device)

    teacher_logits_for = _teacher_source(cfg, ctx)

    def step_loss(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
        logits = student(x)
        teacher_logits = teacher_logits_for(x, rows) if teacher_logits_for else None
        return logits, loss_fn(logits, teacher_logits, y)

    result = fit(
        student,
        step_loss,
        data,
        cfg,
        device=ctx.device,
        checkpoint=checkpoint_path(ctx),
        fingerprint=ctx.fingerprint,
        label=f"{ctx.name} {spec.arch} ({cfg.method.name})",
        augment=cfg.augment,
        extra_params=[p for p in loss_fn.parameters() if p.requires_grad],
        tensorboard_dir=ctx.stage_dir / "tensorboard",
    )
    extra = {"method": cfg.method.name}
    if "teacher" in ctx.inputs:
        extra["teacher_top1"] = ctx.input("teacher").metrics.get("top1")
    return finish_model(student, spec, ctx, "student", result.history, extra)


def _teacher_source(cfg: DistillConfig, ctx: StageContext):
    """A function (x, rows) -> teacher logits, cached over the train split when inputs are fixed."""
    if not _uses_teacher(cfg):
        return None
    teacher, _, _ = load_model(ctx.input("teacher").path())
    teacher.to(ctx.device).to(memory_format=torch.channels_last).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if cfg.augment != "none" or not cfg.cache_teacher:

        def live(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return teacher(x)

        return live

    cached = _cached_logits(teacher, ctx)
    return lambda x, rows: cached[rows].to(x.device)


def _cached_logits(teacher: torch.nn.Module, ctx: StageContext) -> torch.Tensor:
    path = ctx.stage_dir / "teacher_logits.pt"
    key = ctx.inputs["teacher"].entry["artifacts"]["model"]["sha256"] + ctx.fingerprint
    if path.exists():
        stored = load_torch(path)
        if stored.get("key") == key:
            console.print("  reusing cached teacher logits")
            return stored["logits"]
    data = ctx.data()
    console.print(f"  computing teacher logits once for {len(data.train):,} training images")
    logits = predict(teacher, data, data.train, ctx.device)
    save_torch({"key": key, "logits": logits}, path)
    return logits


STAGES.register("distill")(
    StageSpec(
        config=DistillConfig,
        run=run,
        produces="student",
        consumes=lambda cfg: {"teacher": _uses_teacher(cfg)},
        summary="train a student (MobileNetV2 by default) from the teacher",
    )
)
