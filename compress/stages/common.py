"""Helpers the training stages share: build a model for the data, train it, save and report it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from compress import distributed
from compress.config.base import ModelConfig
from compress.data.module import DataModule
from compress.io import write_json
from compress.models import ModelSpec, count_params, save_model
from compress.models.registry import resolve_stem
from compress.stages.base import StageContext, StageResult
from compress.train.evaluate import evaluate


def model_spec(cfg: ModelConfig, data: DataModule) -> ModelSpec:
    return ModelSpec(
        arch=cfg.arch,
        num_classes=data.num_classes,
        in_channels=data.preprocess.channels,
        width_mult=cfg.width_mult,
        stem=resolve_stem(cfg.stem, data.preprocess.size),
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
    metrics: dict[str, Any] = evaluate(model, data, data.test, ctx.device)
    metrics["params"] = count_params(model)
    metrics["test_images"] = len(data.test)
    if history:
        metrics["epochs"] = len(history)
        metrics["train_seconds"] = round(sum(h["seconds"] for h in history), 2)
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
