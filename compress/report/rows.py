"""Every model along the way, read generically from the manifest.

A model is any artifact whose file is a model (``.pt``, ``.onnx``, ``.engine``) of a finished
stage, so a new stage type (pruning, int8) shows up without changes here. A bench stage lists what
it timed in ``metrics.models`` (label -> stage and artifact); each timed (model, runtime) pair is a
row with its latency, and a model never timed is a row without latency. Bench stages written
before ``metrics.models`` existed are read by their fixed labels (onnxruntime, torch,
teacher_torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from compress.manifest import Manifest
from compress.registry import BACKENDS

FORMATS = {".pt": "PyTorch", ".onnx": "ONNX", ".engine": "TensorRT", ".plan": "TensorRT"}


@dataclass
class ModelRow:
    stage: str
    stage_type: str
    artifact: str
    format: str
    arch: str | None = None
    runtime: str | None = None  # the bench label, e.g. onnxruntime, teacher_torch-cuda
    top1: float | None = None
    top5: float | None = None
    ece: float | None = None
    params: int | None = None
    macs: int | None = None
    bytes: int | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> stats

    precision: str | None = None  # INT8 / FP32 where a stage wrote both

    @property
    def name(self) -> str:
        arch = f" {self.arch}" if self.arch else ""
        precision = f" {self.precision}" if self.precision else ""
        return f"{self.stage}{arch} ({self.format}{precision})"

    @property
    def runtime_name(self) -> str:
        return "-" if self.runtime is None else runtime_name(self.runtime)


def runtime_name(label: str) -> str:
    """A bench label (onnxruntime, torch, teacher_torch-cuda...) as a reader names the runtime."""
    label = label.removeprefix("teacher_")
    backend = label.removesuffix("-cuda").removesuffix("-fp32")  # the FP32 twin: same runtime
    title = BACKENDS.get(backend).title if backend in BACKENDS else label.removesuffix("-cuda")
    return title + (", cuda" if label.endswith("-cuda") else "")


def model_rows(manifest: Manifest) -> list[ModelRow]:
    stages = manifest.stages
    config = manifest.data.get("pipeline", {}).get("config", {}).get("stages", {})
    base: dict[tuple[str, str], ModelRow] = {}
    for name, entry in stages.items():
        if entry.get("status") != "done":
            continue
        metrics = entry.get("metrics", {})
        for key, record in entry.get("artifacts", {}).items():
            fmt = FORMATS.get(Path(record.get("path", "")).suffix)
            if fmt is None or not record["path"].startswith(f"{name}/"):
                continue  # not a model, or another stage's file it refers to (float_model)
            base[(name, key)] = ModelRow(
                stage=name, stage_type=entry["type"], artifact=key, format=fmt,
                arch=_arch(name, entry, config, stages), top1=metrics.get("top1"),
                top5=metrics.get("top5"), ece=metrics.get("ece"), params=metrics.get("params"),
                macs=metrics.get("macs"), bytes=record.get("bytes"),
                precision=_precision(key, entry),
            )  # fmt: skip
    measured: dict[tuple[str, str], list[ModelRow]] = {}
    for entry in stages.values():
        if entry.get("type") != "bench" or entry.get("status") != "done":
            continue
        metrics = entry.get("metrics", {})
        for label, target in bench_targets(entry, stages).items():
            key = (target["stage"], target["artifact"])
            if key not in base or label not in metrics.get("latency_ms", {}):
                continue
            facts = {k: target[k] for k in ("params", "macs", "top1", "top5", "ece")
                     if target.get(k) is not None}  # fmt: skip
            if target["artifact"] == "onnx" and "top1" not in facts and "top1" in metrics:
                facts.update(top1=metrics["top1"], top5=metrics.get("top5"))
            row = replace(base[key], runtime=label, latency=metrics["latency_ms"][label], **facts)
            measured.setdefault(key, []).append(row)
    rows = []
    for key, row in base.items():
        rows.extend(measured.get(key, [row]))
    return rows


def _precision(artifact: str, entry: dict[str, Any]) -> str | None:
    """INT8 for a quantized model's files, FP32 for the float twin exported beside them."""
    if artifact.endswith("_fp32"):
        return "FP32"
    quantized = "quant" in entry.get("metrics", {}) or "runtime_ops" in entry.get("metrics", {})
    return "INT8" if quantized and artifact in ("model", "onnx", "tensorrt") else None


def bench_targets(entry: dict[str, Any], stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    metrics = entry.get("metrics", {})
    if "models" in metrics:
        return metrics["models"]
    inputs = entry.get("inputs", {})
    targets = {}
    if "onnx" in inputs:
        onnx_stage = inputs["onnx"]["stage"]
        targets["onnxruntime"] = {"stage": onnx_stage, "artifact": "onnx"}
        student = stages.get(onnx_stage, {}).get("inputs", {}).get("student")
        if student:
            targets["torch"] = {"stage": student["stage"], "artifact": "model"}
    if "teacher" in inputs:
        targets["teacher_torch"] = {"stage": inputs["teacher"]["stage"], "artifact": "model"}
    return targets


def _arch(
    name: str, entry: dict[str, Any], config: dict[str, Any], stages: dict[str, Any]
) -> str | None:
    """The architecture from the stage's config, or from the stage it took its model from."""
    cfg = config.get(name, {})
    for key in ("model", "student"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("arch"):
            return cfg[key]["arch"]
    for source in entry.get("inputs", {}).values():
        if source.get("stage") in stages and source["stage"] != name:
            return _arch(source["stage"], stages[source["stage"]], config, stages)
    return None


def teacher_row(rows: list[ModelRow]) -> ModelRow | None:
    """The reference for ratios: the teacher's PyTorch model, timed on CPU if it was timed."""
    teachers = [r for r in rows if r.stage_type == "teacher"]
    timed = [r for r in teachers if r.latency and not (r.runtime or "").endswith("-cuda")]
    return (timed or teachers or [None])[0]


def batch_sizes(rows: list[ModelRow]) -> list[str]:
    sizes = {bs for r in rows for bs in r.latency}
    return sorted(sizes, key=int)
