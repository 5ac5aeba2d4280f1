"""teacher: train the teacher from scratch, or load a user's checkpoint and evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from compress.config.base import ModelConfig, TrainConfig
from compress.io import load_torch
from compress.models import build_model
from compress.models.checkpoint import load_state_dict_checked
from compress.models.weights import extract_state_dict
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.common import checkpoint_path, finish_model, model_spec
from compress.train.loop import FitResult, fit


class TeacherConfig(TrainConfig, StageConfig):
    type: Literal["teacher"] = "teacher"
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(arch="resnet34"), description="the architecture"
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing while training"
    )
    checkpoint: Path | None = Field(
        None,
        description="load these weights (a torchvision-style state_dict) instead of training",
    )

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"checkpoint file not found: {value}")
        return value


def run(cfg: TeacherConfig, ctx: StageContext) -> StageResult:
    data = ctx.data()
    spec = model_spec(cfg.model, data)
    model = build_model(spec, cfg.model.library_weights(), log=True)
    if cfg.checkpoint is not None:
        state = extract_state_dict(load_torch(cfg.checkpoint), cfg.checkpoint)
        load_state_dict_checked(model, state, cfg.checkpoint, spec.arch)
        model.to(ctx.device)
        return finish_model(model, spec, ctx, "teacher", [], {"source": str(cfg.checkpoint)})

    result = train_teacher(model, cfg, ctx, f"{ctx.name} {spec.arch}")
    return finish_model(model, spec, ctx, "teacher", result.history)


def train_teacher(model: nn.Module, cfg: TeacherConfig, ctx: StageContext, label: str) -> FitResult:
    """Train ``model`` in place with cross-entropy on the stage's data (benchmarks time this)."""

    def step_loss(net: nn.Module, _: nn.Module, x: torch.Tensor, y: torch.Tensor, rows):
        logits = net(x)
        return logits, F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    return fit(
        model,
        step_loss,
        ctx.data(),
        cfg,
        device=ctx.device,
        checkpoint=checkpoint_path(ctx),
        fingerprint=ctx.fingerprint,
        label=label,
        augment=cfg.augment,
        tensorboard_dir=ctx.stage_dir / "tensorboard",
    )


STAGES.register("teacher")(
    StageSpec(
        config=TeacherConfig,
        run=run,
        produces="teacher",
        consumes=lambda cfg: {},
        summary="train a teacher (ResNet-34 by default) or load a user's checkpoint",
        distributed=True,
    )
)
