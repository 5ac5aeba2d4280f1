"""What the ptq and qat stages share: a calibrated start, and the finished model's record."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from compress.errors import CompressError
from compress.models import ModelSpec, load_model
from compress.quant.config import QuantSettings
from compress.quant.prepare import calibrate, quantize_model
from compress.stages.base import StageContext, StageInput, StageResult
from compress.stages.common import finish_model
from compress.train.evaluate import evaluate
from compress.ui import console


def quantize_input(
    settings: QuantSettings, ctx: StageContext
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """The stage's student, BatchNorm folded, fake-quantized and calibrated.

    Returns the quantized model, its spec and the metrics a reader compares: the float
    student's top-1 and the top-1 right after calibration (what PTQ alone gives).
    """
    source: StageInput = ctx.input("student")
    model, spec, _ = load_model(source.path())
    if spec.quant is not None:
        raise CompressError(
            f"stage '{source.stage}' already produced a quantized model; quantize a float "
            "student (set `input:` to a distill or prune stage)"
        )
    data = ctx.data()
    quant_spec = settings.quant_spec()
    quantized = quantize_model(model, quant_spec)
    sample = data.train.sample(settings.calibration_images, ctx.seed)
    images = calibrate(quantized, (x for x, _, _ in data.eval_batches(sample)), ctx.device)
    float_top1 = source.metrics.get("top1")
    if float_top1 is None:
        float_top1 = evaluate(model, data, data.test, ctx.device)["top1"]
    ptq_top1 = evaluate(quantized, data, data.test, ctx.device)["top1"]
    console.print(
        f"  calibrated {quant_spec.target} INT8 on {images:,} images: top1 {float_top1:.4f} "
        f"(float) -> {ptq_top1:.4f} ({100 * (ptq_top1 - float_top1):+.2f} points)"
    )
    metrics = {
        "float_top1": float_top1,
        "ptq_top1": ptq_top1,
        "calibration_images": images,
        "quant": quant_spec.to_dict(),
    }
    return quantized, replace(spec, quant=quant_spec.to_dict()), metrics


def finish_quantized(
    model: nn.Module,
    spec: ModelSpec,
    ctx: StageContext,
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> StageResult:
    """Save the quantized student; ``float_model`` names the float student it came from, so
    export can ship the FP32 twin beside the INT8 file."""
    result = finish_model(model, spec, ctx, "student", history, metrics)
    result.metrics["top1_change"] = result.metrics["top1"] - metrics["float_top1"]
    result.artifacts["float_model"] = ctx.input("student").path()
    return result
