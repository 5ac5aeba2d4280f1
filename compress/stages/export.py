"""export: the student (or any model stage named in ``input``) to ONNX, checked for parity."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compress.errors import CompressError
from compress.export.onnx import export_onnx, onnx_logits, onnx_session
from compress.models import load_model
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.train.evaluate import predict


class ExportConfig(StageConfig):
    type: Literal["export"] = "export"
    formats: list[Literal["onnx"]] = Field(
        default_factory=lambda: ["onnx"], description="files to write (TensorRT joins later)"
    )
    opset: int = Field(18, ge=17, le=23, description="ONNX opset (the exporter's native one is 18)")
    dynamic_batch: bool = Field(True, description="batch dimension left free in the graph")
    parity_images: int = Field(
        1000, ge=0, description="test images compared ONNX vs PyTorch; 0 = the whole test split"
    )
    parity_tolerance: float = Field(1e-3, gt=0.0, description="largest |logit difference| accepted")


def run(cfg: ExportConfig, ctx: StageContext) -> StageResult:
    source = ctx.input("student")
    model, spec, meta = load_model(source.path())
    data = ctx.data()
    preprocess = data.preprocess
    path = ctx.stage_dir / "model.onnx"
    export_onnx(
        model,
        path,
        input_shape=(preprocess.channels, preprocess.size, preprocess.size),
        opset=cfg.opset,
        dynamic_batch=cfg.dynamic_batch,
        metadata={
            "preprocess": meta.get("preprocess", preprocess.metadata()),
            "labels": meta.get("labels", data.classes),
            "arch": spec.arch,
            "source_stage": source.stage,
        },
    )
    metrics = _parity(model, path, cfg, ctx)
    metrics["bytes"] = path.stat().st_size
    if metrics["max_abs_diff"] > cfg.parity_tolerance:
        raise CompressError(
            f"ONNX export of '{source.stage}' disagrees with PyTorch: max |logit diff| "
            f"{metrics['max_abs_diff']:.2e} > parity_tolerance {cfg.parity_tolerance:.0e} "
            f"(top-1 agreement {metrics['top1_agreement']:.4f})"
        )
    return StageResult(metrics=metrics, artifacts={"onnx": path})


def _parity(model: torch.nn.Module, path, cfg: ExportConfig, ctx: StageContext) -> dict:
    data = ctx.data()
    split = data.test.head(cfg.parity_images)
    reference = predict(model.to(ctx.device), data, split, ctx.device).numpy()
    session = onnx_session(path)
    exported = onnx_logits(session, (x for x, _, _ in data.eval_batches(split)))
    agreement = float((reference.argmax(1) == exported.argmax(1)).mean())
    return {
        "parity_images": len(split),
        "max_abs_diff": float(abs(reference - exported).max()),
        "top1_agreement": agreement,
    }


STAGES.register("export")(
    StageSpec(
        config=ExportConfig,
        run=run,
        produces="onnx",
        consumes=lambda cfg: {"student": True},
        summary="export to ONNX (opset >= 17, dynamic batch) with metadata and a parity check",
    )
)
