"""export: the student (or any model stage named in ``input``) to ONNX, checked for parity, and
optionally to a TensorRT engine.

A quantized student (from ptq or qat) becomes a Q/DQ ONNX with int8 weights, checked against the
fake-quantized PyTorch model by top-1 agreement, with the kernels onnxruntime runs for it counted
(integer vs float). Its float twin, the student the quantization started from, is exported
beside it as ``model_fp32.onnx`` so bench and report compare the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from compress.errors import CompressError
from compress.export.kernels import integer_summary, runtime_ops
from compress.export.onnx import export_onnx, onnx_logits, onnx_session
from compress.export.qdq import int8_graph_passes
from compress.export.tensorrt import EngineProfile, build_engine, import_tensorrt
from compress.io import write_json
from compress.models import ModelSpec, load_model
from compress.quant.prepare import freeze_for_export
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.train.evaluate import predict
from compress.ui import console


class ExportConfig(StageConfig):
    type: Literal["export"] = "export"
    formats: list[Literal["onnx", "tensorrt"]] = Field(
        default_factory=lambda: ["onnx"],
        description="onnx always; tensorrt adds an engine (FP16, or INT8 from a qat/ptq "
        "student quantized with target: tensorrt); needs the [tensorrt] extra and a GPU",
    )
    opset: int = Field(18, ge=17, le=23, description="ONNX opset (the exporter's native one is 18)")
    dynamic_batch: bool = Field(True, description="batch dimension left free in the graph")
    parity_images: int = Field(
        1000, ge=0, description="test images compared ONNX vs PyTorch; 0 = the whole test split"
    )
    parity_tolerance: float = Field(1e-3, gt=0.0, description="largest |logit difference| accepted")
    min_agreement: float = Field(
        0.99, ge=0.0, le=1.0,
        description="quantized students: least top-1 agreement of the INT8 ONNX with the "
        "fake-quantized PyTorch model (rounding makes logits differ by a step, not more)",
    )  # fmt: skip
    tensorrt_batch: list[int] = Field(
        default_factory=lambda: [1, 32, 128],
        description="TensorRT optimisation profile: min, opt, max batch size",
    )
    tensorrt_workspace_gib: float = Field(2.0, gt=0.0, description="TensorRT builder workspace")

    @field_validator("tensorrt_batch")
    @classmethod
    def _profile(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or not 1 <= value[0] <= value[1] <= value[2]:
            raise ValueError("give three batch sizes: min <= opt <= max, all >= 1")
        return value


def run(cfg: ExportConfig, ctx: StageContext) -> StageResult:
    if "tensorrt" in cfg.formats:
        import_tensorrt()  # no tensorrt: say so before any work
    source = ctx.input("student")
    model, spec, meta = load_model(source.path())
    if "tensorrt" in cfg.formats and spec.quant and spec.quant.get("target") != "tensorrt":
        raise CompressError(
            f"'{source.stage}' is quantized for onnxruntime (uint8 activations), which TensorRT "
            "cannot load; set `target: tensorrt` on that stage for an INT8 engine"
        )
    path = ctx.stage_dir / "model.onnx"
    metrics = _export_checked(model, spec, meta, path, cfg, ctx, source.stage)
    # the model this file was exported from, and its accuracy: what bench times beside it
    metrics["source"] = {"stage": source.stage, "top1": source.metrics.get("top1")}
    artifacts: dict[str, Path] = {"onnx": path, "source_model": source.path()}
    if spec.quant is not None:
        ops = runtime_ops(path)
        metrics.update(runtime_ops=ops, **integer_summary(ops))
        console.print(
            f"  INT8 ONNX: onnxruntime runs {metrics['integer_ops']} integer kernels, "
            f"{metrics['float_compute_ops']} float compute ops"
        )
        if source.has("float_model"):
            float_model, float_spec, float_meta = load_model(source.path("float_model"))
            fp32_path = ctx.stage_dir / "model_fp32.onnx"
            metrics["fp32"] = _export_checked(
                float_model, float_spec, float_meta, fp32_path, cfg, ctx, source.stage
            )
            artifacts["onnx_fp32"] = fp32_path
    if "tensorrt" in cfg.formats:
        artifacts.update(_engine(path, spec, cfg, ctx))
    return StageResult(metrics=metrics, artifacts=artifacts)


def _export_checked(
    model: torch.nn.Module,
    spec: ModelSpec,
    meta: dict[str, Any],
    path: Path,
    cfg: ExportConfig,
    ctx: StageContext,
    stage: str,
) -> dict[str, Any]:
    """Export one model and hold it to the parity bar its kind allows."""
    data = ctx.data()
    metadata = {
        "preprocess": meta.get("preprocess", data.preprocess.metadata()),
        "labels": meta.get("labels", data.classes),
        "arch": spec.arch,
        "source_stage": stage,
    }
    if spec.quant is not None:
        metadata["quantization"] = spec.quant
    p = data.preprocess
    exported = freeze_for_export(model) if spec.quant is not None else model
    export_onnx(exported, path, input_shape=(p.channels, p.size, p.size), opset=cfg.opset,
                dynamic_batch=cfg.dynamic_batch, metadata=metadata,
                graph_passes=int8_graph_passes(spec.quant))  # fmt: skip
    metrics = _parity(model, path, cfg, ctx)
    metrics["bytes"] = path.stat().st_size
    if spec.quant is not None:
        if metrics["top1_agreement"] < cfg.min_agreement:
            raise CompressError(
                f"INT8 ONNX of '{stage}' agrees with the fake-quantized model on only "
                f"{metrics['top1_agreement']:.4f} of test images (< min_agreement "
                f"{cfg.min_agreement}); max |logit diff| {metrics['max_abs_diff']:.3g}"
            )
    elif metrics["max_abs_diff"] > cfg.parity_tolerance:
        raise CompressError(
            f"ONNX export of '{stage}' disagrees with PyTorch: max |logit diff| "
            f"{metrics['max_abs_diff']:.2e} > parity_tolerance {cfg.parity_tolerance:.0e} "
            f"(top-1 agreement {metrics['top1_agreement']:.4f})"
        )
    return metrics


def _parity(model: torch.nn.Module, path: Path, cfg: ExportConfig, ctx: StageContext) -> dict:
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


def _engine(onnx_path: Path, spec: ModelSpec, cfg: ExportConfig, ctx: StageContext) -> dict:
    """Build the TensorRT engine; a sidecar JSON carries what ``compress bench`` needs."""
    p = ctx.data().preprocess
    engine = ctx.stage_dir / "model.engine"
    log = ctx.stage_dir / "tensorrt_build.log"
    facts = build_engine(
        onnx_path, engine, log, int8=spec.quant is not None,
        input_shape=(p.channels, p.size, p.size), profile=EngineProfile(*cfg.tensorrt_batch),
        workspace_gib=cfg.tensorrt_workspace_gib,
    )  # fmt: skip
    sidecar = engine.with_suffix(".engine.json")
    write_json(sidecar, {**facts, "preprocess": p.metadata(), "labels": ctx.data().classes,
                         "input_shape": ["batch", p.channels, p.size, p.size]})  # fmt: skip
    console.print(f"  TensorRT engine: {facts['precision']}, {facts['bytes']:,} bytes")
    return {"tensorrt": engine, "tensorrt_log": log, "tensorrt_info": sidecar}


STAGES.register("export")(
    StageSpec(
        config=ExportConfig,
        run=run,
        produces="onnx",
        consumes=lambda cfg: {"student": True},
        version=2,  # records its source model (source_model) for bench
        summary="export to ONNX (INT8 Q/DQ for quantized students) with a parity check, "
        "and optionally a TensorRT engine",
    )
)
