"""bench: latency and throughput of the exported ONNX (onnxruntime) and of the PyTorch models it
came from, per batch size, plus the ONNX artifact's own accuracy and calibration on the full test
split. Uses the same runners and timing as ``compress bench``; the raw latency samples go to
``latency_samples.npz`` (one array per ``<label>/<batch>``) for the report's distributions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from compress.bench.accuracy import classification_metrics
from compress.bench.backends import BackendOptions, load_runner
from compress.bench.environment import environment
from compress.bench.facts import model_facts
from compress.bench.samples import save_samples
from compress.bench.sidebyside import onnx_side_by_side
from compress.bench.timing import STAGE_PLAN, TimingPlan, summarize
from compress.config.base import registered
from compress.export.onnx import onnx_logits, onnx_session
from compress.io import write_json
from compress.registry import BACKENDS
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.ui import console


class BenchConfig(StageConfig):
    type: Literal["bench"] = "bench"
    backends: list[registered(BACKENDS)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["onnxruntime", "torch"],
        description="onnxruntime runs the ONNX file (and its FP32 twin after ptq/qat); torch "
        "(eager), torch-compile and torch-cudagraph (cuda only) run the model it was exported "
        "from; tensorrt the engine (cuda only)",
    )
    devices: list[Literal["cpu", "cuda"]] = Field(
        default_factory=lambda: ["cpu"],
        description="cuda entries are skipped, with a note, on a machine without a GPU",
    )
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 32], description="each is timed separately"
    )
    include_teacher: bool = Field(True, description="also time the teacher in PyTorch (eager)")
    threads: int | None = Field(None, ge=1, description="inference threads; default: all cores")
    warmup_iterations: int = Field(
        STAGE_PLAN.warmup_iterations, ge=0, description="untimed calls first..."
    )
    warmup_seconds: float = Field(
        STAGE_PLAN.warmup_seconds, ge=0.0, description="...and for at least this long"
    )
    min_iterations: int = Field(
        STAGE_PLAN.min_iterations, ge=1, description="timed calls, at least..."
    )
    min_seconds: float = Field(
        STAGE_PLAN.min_seconds, ge=0.0, description="...and for at least this long"
    )
    max_seconds: float = Field(
        STAGE_PLAN.max_seconds, gt=0.0, description="per backend and batch size"
    )
    ratio_rounds: int = Field(
        10, ge=2, description="interleaved rounds timing INT8 vs FP32 ONNX for their speed-up"
    )
    accuracy: bool = Field(True, description="top-1/top-5/ECE of the ONNX file on the test split")


@dataclass(frozen=True)
class Target:
    """One artifact on one backend and device; ``label`` keys ``latency_ms``."""

    label: str
    backend: str
    device: str
    path: Path
    stage: str
    artifact: str


def run(cfg: BenchConfig, ctx: StageContext) -> StageResult:
    data = ctx.data()
    p = data.preprocess
    plan = TimingPlan(
        cfg.warmup_iterations, cfg.warmup_seconds, cfg.min_iterations, cfg.min_seconds,
        cfg.max_seconds,
    )  # fmt: skip
    targets, skipped = _targets(cfg, ctx)
    for note in skipped:
        console.print(f"  [yellow]{note}[/]")

    latency: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    samples: dict[str, np.ndarray] = {}
    for target in targets:
        options = BackendOptions(cfg.threads, target.device)  # type: ignore[arg-type]
        runner = load_runner(target.backend, target.path, options)
        models[target.label] = {
            "stage": target.stage, "artifact": target.artifact, "backend": target.backend,
            "device": target.device, **model_facts(target.path),
        }  # fmt: skip
        latency[target.label] = {}
        for bs in cfg.batch_sizes:
            batch = np.random.default_rng(0).standard_normal((bs, p.channels, p.size, p.size))
            times = runner.time(batch.astype(np.float32), plan)
            stats = summarize(times, bs)
            latency[target.label][str(bs)] = stats
            samples[f"{target.label}/{bs}"] = times
            console.print(
                f"  {target.label:<14} batch {bs:>4}: p50 {stats['p50']:8.3f} ms  "
                f"p99 {stats['p99']:8.3f} ms  {stats['throughput']:10,.0f} img/s"
            )

    onnx_input = ctx.input("onnx")
    onnx_facts = model_facts(onnx_input.path("onnx"))
    metrics: dict[str, Any] = {
        "latency_ms": latency,
        "threads": cfg.threads or torch.get_num_threads(),
        "models": models,
        "params": onnx_facts["params"],
        "macs": onnx_facts["macs"],
        "skipped": skipped,
        "environment": environment(cfg.threads),
    }
    per_class: dict[str, Any] = {}
    if cfg.accuracy:
        measured = _test_metrics(onnx_input.path("onnx"), cfg, data)
        per_class = measured.pop("per_class_top1")
        metrics.update(measured)
        metrics["test_images"] = len(data.test)
        student_top1 = onnx_input.metrics["source"]["top1"]
        if student_top1 is not None:
            metrics["torch_top1"] = student_top1
            metrics["top1_delta_vs_torch"] = metrics["top1"] - student_top1
        for entry in models.values():  # the accuracy belongs to the ONNX file
            if entry["artifact"] == "onnx":
                entry.update(top1=metrics["top1"], top5=metrics["top5"], ece=metrics["ece"])
    if onnx_input.has("onnx_fp32"):
        metrics.update(_int8_vs_fp32(cfg, ctx, data))
        if "fp32_onnx_top1" in metrics and "top1" in metrics:
            metrics["top1_delta_vs_fp32"] = metrics["top1"] - metrics["fp32_onnx_top1"]
            for entry in models.values():
                if entry["artifact"] == "onnx_fp32":
                    entry.update(top1=metrics["fp32_onnx_top1"])
    if "teacher" in ctx.inputs:
        metrics["teacher_top1"] = ctx.input("teacher").metrics.get("top1")

    report = ctx.stage_dir / "bench.json"
    write_json(report, {**metrics, "per_class_top1": per_class})
    samples_path = save_samples(ctx.stage_dir, samples)
    return StageResult(metrics=metrics, artifacts={"report": report, "samples": samples_path})


def _int8_vs_fp32(cfg: BenchConfig, ctx: StageContext, data: Any) -> dict[str, Any]:
    """INT8 ONNX against its FP32 twin: speed-up timed side by side, and both accuracies."""
    onnx_input = ctx.input("onnx")
    paths = {"fp32": onnx_input.path("onnx_fp32"), "int8": onnx_input.path("onnx")}
    p = data.preprocess
    measured = onnx_side_by_side(paths, (p.channels, p.size, p.size), cfg.batch_sizes,
                                 cfg.ratio_rounds, cfg.threads)  # fmt: skip
    speedup: dict[str, float] = {}
    for bs, stats in measured.items():
        speedup[str(bs)] = stats["fp32"]["p50"] / stats["int8"]["p50"]  # p50: robust to noise
        console.print(
            f"  INT8 vs FP32 ONNX, batch {bs:>4}: p50 {stats['int8']['p50']:.3f} vs "
            f"{stats['fp32']['p50']:.3f} ms -> x{speedup[str(bs)]:.2f}"
        )
    out: dict[str, Any] = {"int8_speedup": speedup}
    if cfg.accuracy:
        out["fp32_onnx_top1"] = _test_metrics(paths["fp32"], cfg, data)["top1"]
    return out


def _test_metrics(path: Path, cfg: BenchConfig, data: Any) -> dict[str, Any]:
    """Top-1/top-5/ECE/per-class accuracy of an ONNX file on the whole test split."""
    logits = onnx_logits(
        onnx_session(path, cfg.threads), (x for x, _, _ in data.eval_batches(data.test))
    )
    return classification_metrics(logits, data.test.labels.numpy(), data.classes)


def _targets(cfg: BenchConfig, ctx: StageContext) -> tuple[list[Target], list[str]]:
    """What to time: the ONNX file and its source model per backend, and the teacher (eager)."""
    onnx_input = ctx.input("onnx")
    source_stage = onnx_input.metrics["source"]["stage"]
    artifacts = onnx_input.entry["artifacts"]
    targets, skipped = [], []
    for device in cfg.devices:
        if device == "cuda" and not torch.cuda.is_available():
            skipped.append("cuda: no CUDA device on this machine, cuda timings skipped")
            continue
        suffix = "" if device == "cpu" else f"-{device}"
        for backend in cfg.backends:
            spec = BACKENDS.get(backend)
            runs = spec.runs
            if device not in spec.devices:
                skipped.append(f"{backend}: runs on {' or '.join(spec.devices)} only; add "
                               f"{spec.devices[0]} to devices")  # fmt: skip
                continue
            if runs == "onnx":
                targets.append(Target(backend + suffix, backend, device, onnx_input.path("onnx"),
                                      onnx_input.stage, "onnx"))  # fmt: skip
                if "onnx_fp32" in artifacts:
                    targets.append(Target(f"{backend}-fp32{suffix}", backend, device,
                                          onnx_input.path("onnx_fp32"), onnx_input.stage,
                                          "onnx_fp32"))  # fmt: skip
            elif runs == "engine":
                if "tensorrt" not in artifacts:
                    skipped.append(f"{backend}: the export stage built no engine (formats)")
                else:
                    targets.append(Target(backend + suffix, backend, device,
                                          onnx_input.path("tensorrt"), onnx_input.stage,
                                          "tensorrt"))  # fmt: skip
            else:
                targets.append(Target(backend + suffix, backend, device,
                                      onnx_input.path("source_model"), source_stage,
                                      "model"))  # fmt: skip
        if cfg.include_teacher and "teacher" in ctx.inputs:
            teacher = ctx.input("teacher")
            targets.append(Target("teacher_torch" + suffix, "torch", device, teacher.path(),
                                  teacher.stage, "model"))  # fmt: skip
    return targets, skipped


def check_gates(name: str, cfg: BenchConfig, pipeline: Any) -> str | None:
    """A gate must be measurable by the pipeline's last bench stage: fail before any compute."""
    active = pipeline.gates.active()
    benches = [n for n, c in pipeline.stage_items() if c.type == "bench"]
    if not active or benches[-1] != name:
        return None
    has_teacher = any(c.type == "teacher" for _, c in pipeline.stage_items())
    if {"max_p99_ms", "min_speedup"} & set(active):
        if pipeline.gates.batch_size not in cfg.batch_sizes:
            return (
                f"gates.batch_size {pipeline.gates.batch_size} is not in {name}.batch_sizes "
                f"{cfg.batch_sizes}"
            )
        if "onnxruntime" not in cfg.backends or "cpu" not in cfg.devices:
            return f"latency gates read onnxruntime on cpu, which {name} skips"
    if "min_speedup" in active and not (cfg.include_teacher and has_teacher):
        return f"gates.min_speedup needs a teacher stage and {name}.include_teacher"
    if "max_accuracy_drop" in active and not (cfg.accuracy and has_teacher):
        return f"gates.max_accuracy_drop needs a teacher stage and {name}.accuracy"
    return None


STAGES.register("bench")(
    StageSpec(
        config=BenchConfig,
        run=run,
        produces="bench",
        consumes=lambda cfg: {"onnx": True, "teacher": False},
        check=check_gates,
        summary="latency percentiles, throughput and accuracy of the exported artifact",
    )
)
