"""bench: latency and throughput of the exported ONNX (onnxruntime) and of the PyTorch model it
came from, per batch size, plus the ONNX artifact's own top-1 on the full test split."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from compress.bench.backends import BACKENDS
from compress.bench.timing import TimingPlan, summarize, time_calls
from compress.export.onnx import onnx_logits, onnx_session
from compress.io import write_json
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.train.evaluate import accuracy
from compress.ui import console


class BenchConfig(StageConfig):
    type: Literal["bench"] = "bench"
    backends: list[Literal["onnxruntime", "torch"]] = Field(
        default_factory=lambda: ["onnxruntime", "torch"],
        description="onnxruntime runs the ONNX file; torch runs the model it was exported from",
    )
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 32], description="each is timed separately"
    )
    include_teacher: bool = Field(True, description="also time the teacher in PyTorch")
    threads: int | None = Field(None, ge=1, description="inference threads; default: all cores")
    warmup_iterations: int = Field(10, ge=0, description="untimed calls first...")
    warmup_seconds: float = Field(0.5, ge=0.0, description="...and for at least this long")
    min_iterations: int = Field(200, ge=1, description="timed calls, at least...")
    min_seconds: float = Field(2.0, ge=0.0, description="...and for at least this long")
    max_seconds: float = Field(20.0, gt=0.0, description="per backend and batch size")
    accuracy: bool = Field(True, description="top-1/top-5 of the ONNX file on the test split")


def run(cfg: BenchConfig, ctx: StageContext) -> StageResult:
    onnx_input = ctx.input("onnx")
    onnx_path = onnx_input.path("onnx")
    student_ref = onnx_input.entry["inputs"]["student"]
    student_path = ctx.run_dir / student_ref["path"]
    data = ctx.data()
    p = data.preprocess
    plan = TimingPlan(
        cfg.warmup_iterations, cfg.warmup_seconds, cfg.min_iterations, cfg.min_seconds,
        cfg.max_seconds,
    )  # fmt: skip
    targets = [(backend, onnx_path if backend == "onnxruntime" else student_path)
               for backend in cfg.backends]  # fmt: skip
    if cfg.include_teacher and "teacher" in ctx.inputs:
        targets.append(("teacher_torch", ctx.input("teacher").path()))

    latency: dict[str, dict[str, Any]] = {}
    for label, path in targets:
        runner = BACKENDS.get("torch" if label == "teacher_torch" else label)(path, cfg.threads)
        latency[label] = {}
        for bs in cfg.batch_sizes:
            batch = np.random.default_rng(0).standard_normal((bs, p.channels, p.size, p.size))
            batch = batch.astype(np.float32)
            stats = summarize(time_calls(lambda b=batch, r=runner: r(b), plan), bs)
            latency[label][str(bs)] = stats
            console.print(
                f"  {label:<14} batch {bs:>4}: p50 {stats['p50']:8.3f} ms  "
                f"p99 {stats['p99']:8.3f} ms  {stats['throughput']:10,.0f} img/s"
            )

    metrics: dict[str, Any] = {
        "latency_ms": latency,
        "threads": cfg.threads or torch.get_num_threads(),
    }
    if cfg.accuracy:
        session = onnx_session(onnx_path, cfg.threads)
        logits = onnx_logits(session, (x for x, _, _ in data.eval_batches(data.test)))
        metrics.update(accuracy(torch.from_numpy(logits), data.test.labels))
        metrics["test_images"] = len(data.test)
        student_top1 = ctx.entry(student_ref["stage"]).get("metrics", {}).get("top1")
        if student_top1 is not None:
            metrics["torch_top1"] = student_top1
            metrics["top1_delta_vs_torch"] = metrics["top1"] - student_top1
    if "teacher" in ctx.inputs:
        metrics["teacher_top1"] = ctx.input("teacher").metrics.get("top1")
    report = ctx.stage_dir / "bench.json"
    write_json(report, metrics)
    return StageResult(metrics=metrics, artifacts={"report": report})


STAGES.register("bench")(
    StageSpec(
        config=BenchConfig,
        run=run,
        produces="bench",
        consumes=lambda cfg: {"onnx": True, "teacher": False},
        summary="latency percentiles, throughput and accuracy of the exported artifact",
    )
)
