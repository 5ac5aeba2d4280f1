"""distill: train the student from the teacher with a registered distillation method.

``teachers: [a, b, ...]`` names several earlier stages whose models teach together: ``kd``
averages their probabilities at its temperature T. Other methods read one teacher (feature
methods tap one teacher's layers, DKD splits one teacher's target class), so several teachers
with them is a config error rather than a silent choice of the first.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from compress.config.base import ModelConfig, TrainConfig
from compress.distill.config import DistillSettings
from compress.distill.methods.mutual import buildable
from compress.models import build_model
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.common import distill_in_stage, finish_model, model_spec, teacher_inputs
from compress.train.evaluate import evaluate


class DistillConfig(DistillSettings, TrainConfig, StageConfig):
    type: Literal["distill"] = "distill"
    student: ModelConfig = Field(
        default_factory=lambda: ModelConfig(arch="mobilenet_v2"), description="the architecture"
    )
    seed: int | None = Field(
        None, ge=0, description="student init and batch order seed; default: the pipeline's"
    )
    teachers: list[str] = Field(
        default_factory=list,
        description="several teacher stages (kd averages their probabilities at T); "
        "the first becomes input",
    )

    @model_validator(mode="after")
    def _several_teachers(self) -> DistillConfig:
        if not self.teachers:
            return self
        if self.input is not None and self.input != self.teachers[0]:
            raise ValueError(f"set input or teachers, not both (input: {self.input})")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"teachers: a stage is listed twice: {self.teachers}")
        if len(self.teachers) > 1 and self.method.name != "kd":
            raise ValueError(
                f"several teachers are averaged by method kd only; {self.method.name} reads "
                "one teacher (use input: or a single entry in teachers)"
            )
        self.input = self.teachers[0]
        return self


def run(cfg: DistillConfig, ctx: StageContext) -> StageResult:
    spec = model_spec(cfg.student, ctx.data())
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    # mutual learning builds its peers alike
    student = buildable(build_model(spec, cfg.student.library_weights(), log=True), spec)
    label = f"{ctx.name} {spec.arch} ({cfg.method_name()})"
    result = distill_in_stage(student, cfg, cfg, ctx, label, seed=cfg.seed)
    extra: dict = {"method": cfg.method_name(), "seed": cfg.seed, **result.timings}
    peers = getattr(result.companion, "peers", None)
    if peers:  # mutual learning: report the students trained alongside
        data = ctx.data()
        extra["peer_top1"] = [evaluate(p, data, data.test, ctx.device)["top1"] for p in peers]
    if "teacher" in ctx.inputs:
        extra["teacher_top1"] = ctx.input("teacher").metrics.get("top1")
    if len(cfg.teachers) > 1:
        extra["teachers_top1"] = [t.metrics.get("top1") for t in teacher_inputs(ctx)]
    return finish_model(student, spec, ctx, "student", result.history, extra)


STAGES.register("distill")(
    StageSpec(
        config=DistillConfig,
        run=run,
        produces="student",
        consumes=lambda cfg: {"teacher": cfg.uses_teacher()},
        extra_inputs=lambda cfg: {
            f"teacher.{i}": ("teacher", stage) for i, stage in enumerate(cfg.teachers[1:], start=2)
        },
        summary="train a student (MobileNetV2 by default) from the teacher",
        distributed=True,
    )
)
