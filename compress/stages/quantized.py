"""What the ptq and qat stages share: a calibrated start, and the finished model's record."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from compress.config.base import ModelConfig
from compress.config.pipeline import find_producer
from compress.errors import CompressError
from compress.models import ModelSpec, build_model, load_model
from compress.quant.config import QuantSettings
from compress.quant.prepare import calibrate, quantize_model
from compress.registry import DATASETS
from compress.stages.base import StageContext, StageInput, StageResult
from compress.stages.common import finish_model, spec_for
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


def check_traceable(name: str, cfg: QuantSettings, pipeline: Any) -> str | None:
    """Whether the float model this stage will quantize traces with torch.fx, found at
    validation so that an untraceable model stops the run before any stage writes a file.

    The model is built untrained from the config of the stage that defines it (following
    ``input:`` back through prune or other stages that pass a student on); the class count
    does not change what traces, so a placeholder of 10 is used."""
    found = _defining_model(name, cfg, pipeline)
    if found is None:
        return None
    model_cfg, data_cfg = found
    info = DATASETS.get(data_cfg.dataset)
    channels, size = data_cfg.channels or info.channels, data_cfg.image_size or info.image_size
    spec = spec_for(model_cfg, 10, channels, size)
    try:
        quantize_model(build_model(spec), cfg.quant_spec())
    except CompressError as exc:
        return f"{name}: {exc}"
    except Exception:  # a model that does not build is the model source's error, found later
        return None
    return None


def _defining_model(name: str, cfg: Any, pipeline: Any) -> tuple[ModelConfig, Any] | None:
    """(model config, data config) of the stage whose architecture reaches stage ``name``."""
    stages = pipeline.stage_items()
    configs = dict(stages)
    names = list(configs)
    current, current_cfg = name, cfg
    while True:  # back through stages that pass a model on (prune, ...) to one that defines it
        earlier = stages[: names.index(current)]
        producer = find_producer(earlier, "student", getattr(current_cfg, "input", None))
        if producer is None:
            return None
        producer_cfg = configs[producer]
        if getattr(producer_cfg, "checkpoint", None) is not None:  # the file names its model
            return None
        for field in ("student", "model"):
            model_cfg = getattr(producer_cfg, field, None)
            if isinstance(model_cfg, ModelConfig):
                return model_cfg, producer_cfg.data or pipeline.data
        current, current_cfg = producer, producer_cfg
