"""``compress bench ARTIFACT``: time any ONNX classifier (or a model file of ours) on a backend,
count its parameters and MACs, and, given a dataset, measure its accuracy and calibration with the
preprocessing stored in the file (or the dataset's defaults for a file made elsewhere)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.table import Table

from compress.bench.accuracy import agreement, classification_metrics
from compress.bench.backends import BackendOptions, Runner, default_backend, load_runner
from compress.bench.environment import environment
from compress.bench.facts import model_facts
from compress.bench.timing import TimingPlan, summarize
from compress.config.base import DataConfig
from compress.data.module import DataModule
from compress.errors import CompressError
from compress.export.onnx import read_metadata
from compress.export.tensorrt import ENGINE_SUFFIXES
from compress.models import load_model

LATENCY_KEYS = ("mean", "p50", "p90", "p95", "p99", "p99_9", "max")


@dataclass(frozen=True)
class BenchRequest:
    """Everything ``compress bench`` can be asked; the defaults are the command's defaults."""

    batch_sizes: tuple[int, ...] = (1, 32)
    backend: str | None = None  # default: onnxruntime for .onnx, torch for model.pt
    options: BackendOptions = field(default_factory=BackendOptions)
    plan: TimingPlan = field(default_factory=TimingPlan)
    dataset: str | None = None
    data_root: Path | None = None
    limit: int | None = None  # test images used for accuracy; default: the whole test split
    teacher: Path | None = None  # agreement of predictions with this artifact


def describe_artifact(path: Path) -> dict[str, Any]:
    """Input name/shape and stored preprocessing and labels of an artifact."""
    if not path.is_file():
        raise CompressError(f"artifact not found: {path}")
    if path.suffix == ".onnx":
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CompressError(f"onnxruntime cannot load {path}: {str(exc)[:300]}") from exc
        first = session.get_inputs()[0]
        if first.type != "tensor(float)":
            raise CompressError(f"{path}: input '{first.name}' is {first.type}; float32 expected")
        if len(first.shape) != 4:
            raise CompressError(f"{path}: input shape {first.shape} is not [batch, C, H, W]")
        meta = read_metadata(path)
        return {"input_name": first.name, "shape": list(first.shape),
                "preprocess": meta.get("preprocess"), "labels": meta.get("labels")}  # fmt: skip
    if path.suffix in ENGINE_SUFFIXES:  # the JSON our export writes beside the engine
        sidecar = path.with_suffix(path.suffix + ".json")
        if not sidecar.is_file():
            raise CompressError(f"{path}: no {sidecar.name} beside it (written by compress export)")
        info = json.loads(sidecar.read_text())
        return {"input_name": "input", "shape": info["input_shape"],
                "preprocess": info.get("preprocess"), "labels": info.get("labels")}  # fmt: skip
    _, _, meta = load_model(path)
    pre = meta.get("preprocess")
    if pre is None:
        raise CompressError(f"{path} has no stored preprocessing; export it with compress first")
    return {"input_name": "input", "shape": ["batch", pre["channels"], *pre["size"]],
            "preprocess": pre, "labels": meta.get("labels")}  # fmt: skip


def bench_artifact(path: Path, request: BenchRequest) -> dict[str, Any]:
    """Every figure of one artifact on one backend, as a JSON-ready dict."""
    info = describe_artifact(path)
    _, channels, height, width = info["shape"]
    if not all(isinstance(d, int) for d in (channels, height, width)):
        raise CompressError(f"{path}: input shape {info['shape']} must have fixed C, H, W")
    fixed_batch = info["shape"][0] if isinstance(info["shape"][0], int) else None
    batch_sizes = list(request.batch_sizes)
    if fixed_batch is not None and any(bs != fixed_batch for bs in batch_sizes):
        batch_sizes = [fixed_batch]
    backend = request.backend or default_backend(path)
    runner = load_runner(backend, path, request.options)
    latency = {}
    for bs in batch_sizes:
        batch = np.random.default_rng(0).standard_normal((bs, channels, height, width))
        latency[str(bs)] = summarize(runner.time(batch.astype(np.float32), request.plan), bs)
    results: dict[str, Any] = {
        "artifact": str(path),
        "backend": backend,
        "device": runner.device,
        "dtype": request.options.dtype,
        "input": {"name": info["input_name"], "shape": info["shape"]},
        "model": model_facts(path),
        "plan": asdict(request.plan),
        "latency_ms": latency,
        "environment": environment(request.options.threads),
    }
    if request.dataset:
        results["accuracy"] = _accuracy(runner, info, path, request, fixed_batch)
    return results


def _accuracy(
    runner: Runner,
    info: dict[str, Any],
    path: Path,
    request: BenchRequest,
    fixed_batch: int | None,
) -> dict[str, Any]:
    assert request.dataset is not None
    data = _test_data(info, request)
    logits = _logits(runner, data, fixed_batch)
    if logits.shape[1] != data.num_classes:
        raise CompressError(
            f"the model has {logits.shape[1]} outputs but {request.dataset} has "
            f"{data.num_classes} classes"
        )
    labels = data.test.labels.numpy()
    result = {"dataset": request.dataset, "images": len(data.test),
              **classification_metrics(logits, labels, data.classes)}  # fmt: skip
    if request.teacher is not None:
        teacher_info = describe_artifact(request.teacher)
        teacher_runner = load_runner(
            default_backend(request.teacher), request.teacher, request.options
        )
        teacher_fixed = teacher_info["shape"][0]
        teacher_logits = _logits(
            teacher_runner,
            _test_data(teacher_info, request),
            teacher_fixed if isinstance(teacher_fixed, int) else None,
        )
        teacher_top1 = float((teacher_logits.argmax(1) == labels).mean())
        result["teacher"] = {
            "artifact": str(request.teacher),
            "top1": round(teacher_top1, 6),
            "agreement": round(agreement(logits, teacher_logits), 6),
        }
    return result


def _test_data(info: dict[str, Any], request: BenchRequest) -> Any:
    """The dataset's test split prepared for this artifact's input (size, channels, mean, std)."""
    pre = info.get("preprocess") or {}
    _, channels, height, _ = info["shape"]
    if channels not in (1, 3):
        raise CompressError(f"the model takes {channels} input channels; 1 or 3 expected")
    try:
        cfg = DataConfig(
            dataset=request.dataset, root=request.data_root, image_size=height, channels=channels,
            mean=pre.get("mean"), std=pre.get("std"), train_subset=1, test_subset=request.limit,
        )  # fmt: skip
    except ValueError as exc:
        raise CompressError(f"--dataset {request.dataset}: {exc}") from None
    return DataModule(cfg, seed=0)


def _logits(runner: Runner, data: Any, fixed_batch: int | None) -> np.ndarray:
    outputs = []
    for x, _, _ in data.eval_batches(data.test, fixed_batch or 256):
        batch = x.numpy()
        n = len(batch)
        if fixed_batch and n < fixed_batch:  # a fixed-batch graph: pad the last batch
            batch = np.concatenate([batch, np.zeros((fixed_batch - n, *batch.shape[1:]))])
        outputs.append(runner.predict(batch.astype(np.float32))[:n])
    return np.concatenate(outputs)


def results_table(results: dict[str, Any]) -> Table:
    title = f"{results['artifact']} ({results['backend']}, {results['device']}, {results['dtype']})"
    table = Table(title=title)
    for column in ("batch", "mean ms", "p50", "p90", "p95", "p99", "p99.9", "max", "items/s",
                   "iters"):  # fmt: skip
        table.add_column(column, justify="right")
    for bs, s in results["latency_ms"].items():
        table.add_row(
            bs, *(f"{s[k]:.3f}" for k in LATENCY_KEYS), f"{s['throughput']:,.0f}",
            str(s["iterations"]),
        )  # fmt: skip
    facts = results["model"]
    caption = [
        f"{facts['params'] / 1e6:.2f}M params, {facts['macs'] / 1e6:.1f}M MACs/image, "
        f"{facts['bytes'] / 1e6:.1f} MB"
    ]
    if "accuracy" in results:
        acc = results["accuracy"]
        caption.append(
            f"top-1 {100 * acc['top1']:.2f}%  top-5 {100 * acc['top5']:.2f}%  "
            f"ECE {100 * acc['ece']:.2f}% on {acc['images']:,} {acc['dataset']} test images"
        )
        if "teacher" in acc:
            caption.append(
                f"teacher top-1 {100 * acc['teacher']['top1']:.2f}%, "
                f"agreement {100 * acc['teacher']['agreement']:.2f}%"
            )
    table.caption = "\n".join(caption)
    return table


def load_or_bench(path: Path, request: BenchRequest) -> dict[str, Any]:
    """A results JSON written by ``--json``, or a fresh measurement of an artifact."""
    if path.suffix == ".json":
        if not path.is_file():
            raise CompressError(f"results file not found: {path}")
        results = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(results, dict) or "latency_ms" not in results:
            raise CompressError(f"{path} is not a 'compress bench --json' results file")
        return results
    return bench_artifact(path, request)


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, A, B, B vs A) for every figure both results have."""
    rows = []
    for bs in [bs for bs in a["latency_ms"] if bs in b["latency_ms"]]:
        sa, sb = a["latency_ms"][bs], b["latency_ms"][bs]
        for key in ("p50", "p99", "mean"):
            rows.append((f"batch {bs} {key} ms", f"{sa[key]:.3f}", f"{sb[key]:.3f}",
                         _times(sa[key] / sb[key], "faster", "slower")))  # fmt: skip
        ratio = sb["throughput"] / sa["throughput"]
        rows.append((f"batch {bs} items/s", f"{sa['throughput']:,.0f}",
                     f"{sb['throughput']:,.0f}", f"{ratio:.2f}x"))  # fmt: skip
    fa, fb = a.get("model", {}), b.get("model", {})
    for key, scale, unit in (("params", 1e6, "M"), ("macs", 1e6, "M"), ("bytes", 1e6, " MB")):
        if fa.get(key) and fb.get(key):
            rows.append((key, f"{fa[key] / scale:.2f}{unit}", f"{fb[key] / scale:.2f}{unit}",
                         _times(fa[key] / fb[key], "smaller", "larger")))  # fmt: skip
    acc_a, acc_b = a.get("accuracy", {}), b.get("accuracy", {})
    for key in ("top1", "top5", "ece"):
        if key in acc_a and key in acc_b:
            delta = 100 * (acc_b[key] - acc_a[key])
            rows.append((key, f"{100 * acc_a[key]:.2f}%", f"{100 * acc_b[key]:.2f}%",
                         f"{delta:+.2f} pts"))  # fmt: skip
    return rows


def _times(ratio: float, better: str, worse: str) -> str:
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def compare_table(a: dict[str, Any], b: dict[str, Any]) -> Table:
    table = Table(title="compare: B vs A")
    table.add_column("figure")
    table.add_column(f"A: {Path(a['artifact']).name} ({a['backend']})", justify="right")
    table.add_column(f"B: {Path(b['artifact']).name} ({b['backend']})", justify="right")
    table.add_column("B vs A", justify="right")
    for row in compare_rows(a, b):
        table.add_row(*row)
    return table
