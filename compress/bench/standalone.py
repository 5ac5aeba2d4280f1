"""``compress bench ARTIFACT``: time any ONNX classifier (or a model file of ours) and, given a
dataset, measure its accuracy with the preprocessing stored in the file (or the dataset's)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from compress.bench.backends import BACKENDS
from compress.bench.timing import TimingPlan, summarize, time_calls
from compress.errors import CompressError


def describe_artifact(path: Path) -> dict[str, Any]:
    """Backend, input name/shape and stored preprocessing of an artifact."""
    if not path.is_file():
        raise CompressError(f"artifact not found: {path}")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        from compress.export.onnx import read_metadata

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CompressError(f"onnxruntime cannot load {path}: {str(exc)[:300]}") from exc
        first = session.get_inputs()[0]
        if first.type != "tensor(float)":
            raise CompressError(f"{path}: input '{first.name}' is {first.type}; float32 expected")
        shape = list(first.shape)
        meta = read_metadata(path)
        return {"backend": "onnxruntime", "input_name": first.name, "shape": shape,
                "preprocess": meta.get("preprocess"), "labels": meta.get("labels")}  # fmt: skip
    from compress.models import load_model

    _, _, meta = load_model(path)
    pre = meta.get("preprocess")
    if pre is None:
        raise CompressError(f"{path} has no stored preprocessing; export it with compress first")
    return {"backend": "torch", "input_name": "input",
            "shape": ["batch", pre["channels"], *pre["size"]], "preprocess": pre,
            "labels": meta.get("labels")}  # fmt: skip


def bench_artifact(
    path: Path,
    batch_sizes: list[int],
    threads: int | None,
    dataset: str | None,
    data_root: Path | None,
    min_seconds: float,
) -> dict[str, Any]:
    info = describe_artifact(path)
    _, channels, height, width = info["shape"]
    if not all(isinstance(d, int) for d in (channels, height, width)):
        raise CompressError(f"{path}: input shape {info['shape']} must have fixed C, H, W")
    fixed_batch = info["shape"][0] if isinstance(info["shape"][0], int) else None
    if fixed_batch is not None and any(bs != fixed_batch for bs in batch_sizes):
        batch_sizes = [fixed_batch]
    runner = BACKENDS.get(info["backend"])(path, threads)
    plan = TimingPlan(min_seconds=min_seconds, max_seconds=max(30.0, min_seconds * 3))
    latency = {}
    for bs in batch_sizes:
        batch = np.random.default_rng(0).standard_normal((bs, channels, height, width))
        batch = batch.astype(np.float32)
        latency[str(bs)] = summarize(time_calls(lambda b=batch, r=runner: r(b), plan), bs)
    results: dict[str, Any] = {
        "artifact": str(path),
        "backend": info["backend"],
        "input": {"name": info["input_name"], "shape": info["shape"]},
        "latency_ms": latency,
        "environment": environment(threads),
    }
    if dataset:
        results["accuracy"] = _accuracy(runner, info, dataset, data_root, channels, height)
    return results


def _accuracy(
    runner: Any, info: dict[str, Any], dataset: str, root: Path | None, channels: int, size: int
) -> dict[str, Any]:
    from compress.config.base import DataConfig
    from compress.data.module import DataModule
    from compress.train.evaluate import accuracy

    pre = info.get("preprocess") or {}
    cfg = DataConfig(
        dataset=dataset, root=root, image_size=size, channels=channels,
        mean=pre.get("mean"), std=pre.get("std"), train_subset=1,
    )  # fmt: skip
    data = DataModule(cfg, seed=0)
    logits = np.concatenate([runner(x.numpy()) for x, _, _ in data.eval_batches(data.test, 256)])
    if logits.shape[1] != data.num_classes:
        raise CompressError(
            f"the model has {logits.shape[1]} outputs but {dataset} has {data.num_classes} classes"
        )
    return {**accuracy(torch.from_numpy(logits), data.test.labels), "images": len(data.test)}


def environment(threads: int | None) -> dict[str, Any]:
    from compress.manifest import library_versions

    flags = set()
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isa = [
        f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags
    ]
    import os

    return {
        "cpu": model,
        "isa": isa,
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "versions": library_versions(),
    }


def results_table(results: dict[str, Any]) -> Table:
    table = Table(title=f"{results['artifact']} ({results['backend']})")
    for column in ("batch", "mean ms", "p50", "p90", "p95", "p99", "max", "items/s", "iters"):
        table.add_column(column, justify="right")
    for bs, s in results["latency_ms"].items():
        table.add_row(
            bs, *(f"{s[k]:.3f}" for k in ("mean", "p50", "p90", "p95", "p99", "max")),
            f"{s['throughput']:,.0f}", str(s["iterations"]),
        )  # fmt: skip
    if "accuracy" in results:
        acc = results["accuracy"]
        table.caption = (
            f"top-1 {100 * acc['top1']:.2f}%  top-5 {100 * acc['top5']:.2f}% "
            f"on {acc['images']:,} test images"
        )
    return table
