"""distill: train the student from the teacher with a registered distillation method."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compress.config.base import ModelConfig, TrainConfig
from compress.distill.config import DistillSettings
from compress.distill.train import distill_student
from compress.models import build_model
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.common import finish_model, model_spec
from compress.train.evaluate import evaluate


class DistillConfig(DistillSettings, TrainConfig, StageConfig):
    type: Literal["distill"] = "distill"
    student: ModelConfig = Field(
        default_factory=lambda: ModelConfig(arch="mobilenet_v2"), description="the architecture"
    )
    seed: int | None = Field(
        None, ge=0, description="student init and batch order seed; default: the pipeline's"
    )


def run(cfg: DistillConfig, ctx: StageContext) -> StageResult:
    spec = model_spec(cfg.student, ctx.data())
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    student = build_model(spec)
    label = f"{ctx.name} {spec.arch} ({cfg.method_name()})"
    result = distill_student(student, cfg, cfg, ctx, label, seed=cfg.seed)
    extra: dict = {"method": cfg.method_name(), "seed": cfg.seed}
    peers = getattr(result.companion, "peers", None)
    if peers:  # mutual learning: report the students trained alongside
        data = ctx.data()
        extra["peer_top1"] = [evaluate(p, data, data.test, ctx.device)["top1"] for p in peers]
    if "teacher" in ctx.inputs:
        extra["teacher_top1"] = ctx.input("teacher").metrics.get("top1")
    return finish_model(student, spec, ctx, "student", result.history, extra)


STAGES.register("distill")(
    StageSpec(
        config=DistillConfig,
        run=run,
        produces="student",
        consumes=lambda cfg: {"teacher": cfg.uses_teacher()},
        summary="train a student (MobileNetV2 by default) from the teacher",
        distributed=True,
    )
)
