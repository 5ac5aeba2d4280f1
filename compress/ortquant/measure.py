"""What the INT8 file cost and bought against its FP32 original: accuracy on the test images (and
agreement of their predictions), side-by-side interleaved latency, file sizes, and the kernels
onnxruntime really runs for it (an op left float is where the speed went)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from compress.bench.accuracy import agreement, classification_metrics
from compress.bench.backends import BackendOptions, load_runner
from compress.bench.facts import model_facts
from compress.bench.sidebyside import onnx_side_by_side
from compress.bench.standalone import environment
from compress.errors import CompressError
from compress.export.kernels import (
    INTEGER_OPS,
    float_ops,
    integer_summary,
    optimized_graph,
    runtime_ops,
)
from compress.ui import console, progress

if TYPE_CHECKING:
    from compress.ortquant.images import ImageSet
    from compress.ortquant.quantize import ModelInput, QuantizeRequest

NAMES = ("fp32", "int8")


def measure(request: QuantizeRequest, model_input: ModelInput, images: ImageSet) -> dict[str, Any]:
    """Every figure of the pair: ``files``, ``runtime_ops``, ``accuracy``, ``speed``..."""
    paths = {"fp32": request.source, "int8": request.out}
    files: dict[str, Any] = {
        name: {**model_facts(path), "bytes": file_bytes(path)} for name, path in paths.items()
    }
    files["size_ratio"] = round(files["fp32"]["bytes"] / files["int8"]["bytes"], 3)
    ops = runtime_ops(request.out)
    results: dict[str, Any] = {
        "files": files,
        "runtime_ops": ops,
        **integer_summary(ops),
        "float_ops": float_ops(optimized_graph(request.out)),
        "accuracy": accuracy(request, model_input, images),
        "speed": speed(request, model_input, images),
        "environment": environment(request.threads),
    }
    return results


def file_bytes(path: Path) -> int:
    """Size of an ONNX file with its external data files (torch.onnx.export may write one)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    extra = [path.parent / name for name in locations]
    return path.stat().st_size + sum(p.stat().st_size for p in extra if p.is_file())


def accuracy(
    request: QuantizeRequest, model_input: ModelInput, images: ImageSet
) -> dict[str, Any] | None:
    """Both files on the same evaluation images: top-1/top-5/ECE when labelled, and agreement."""
    if images.evaluation_count == 0:
        return None
    options = BackendOptions(request.threads)
    runners = {
        "fp32": load_runner("onnxruntime", request.source, options),
        "int8": load_runner("onnxruntime", request.out, options),
    }
    fixed = model_input.fixed_batch
    logits: dict[str, list[np.ndarray]] = {name: [] for name in NAMES}
    labels: list[np.ndarray] = []
    with progress() as bars:
        task = bars.add_task("measure", total=images.evaluation_count, stats="fp32 and int8")
        for x, y in images.evaluation(fixed or 256):
            n = len(x)
            if fixed and n < fixed:  # a fixed-batch graph: pad the last batch
                x = np.concatenate([x, np.zeros((fixed - n, *x.shape[1:]), dtype=x.dtype)])
            for name, runner in runners.items():
                logits[name].append(runner.predict(x.astype(np.float32, copy=False))[:n])
            if y is not None:
                labels.append(y)
            bars.advance(task, n)
    fp32, int8 = (np.concatenate(logits[name]) for name in NAMES)
    result: dict[str, Any] = {
        "data": images.evaluation_description,
        "images": len(fp32),
        "agreement": round(agreement(int8, fp32), 6),
    }
    if images.labelled:
        truth = np.concatenate(labels)
        classes = images.classes or [str(i) for i in range(fp32.shape[1])]
        if fp32.shape[1] < len(classes):
            raise CompressError(
                f"the model has {fp32.shape[1]} outputs but the images have {len(classes)} classes"
            )
        for name, values in (("fp32", fp32), ("int8", int8)):
            result[name] = classification_metrics(values, truth, classes)
        result["top1_delta"] = round(result["int8"]["top1"] - result["fp32"]["top1"], 6)
    return result


def speed(
    request: QuantizeRequest, model_input: ModelInput, images: ImageSet
) -> dict[str, dict[str, Any]]:
    """Interleaved onnxruntime latency of both files per batch size; ``ratio`` = FP32 p50 / INT8
    p50 (a fixed-batch graph is timed at its own batch only)."""
    sizes = (model_input.fixed_batch,) if model_input.fixed_batch else request.batch_sizes
    pre = images.preprocess
    chw = (pre["channels"], *pre["size"])
    console.print(f"  timing FP32 and INT8 side by side ({request.rounds} interleaved rounds)")
    measured = onnx_side_by_side({"fp32": request.source, "int8": request.out}, chw, sizes,
                                 request.rounds, request.threads)  # fmt: skip
    return {
        str(bs): {**stats, "ratio": round(stats["fp32"]["p50"] / stats["int8"]["p50"], 3)}
        for bs, stats in measured.items()
    }


def results_table(results: dict[str, Any]) -> Table:
    """FP32 against INT8, figure by figure, with the kernels and settings as the caption."""
    table = Table(title=f"{results['source']} -> {results['output']}")
    for column, justify in (("figure", "left"), ("FP32", "right"), ("INT8", "right"),
                            ("INT8 vs FP32", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    acc = results["accuracy"]
    if acc and "fp32" in acc:
        for key in ("top1", "top5"):
            a, b = acc["fp32"][key], acc["int8"][key]
            table.add_row(key.replace("top", "top-"), f"{100 * a:.2f}%", f"{100 * b:.2f}%",
                          f"{100 * (b - a):+.2f} pts")  # fmt: skip
    files = results["files"]
    table.add_row("file size", f"{files['fp32']['bytes'] / 1e6:.2f} MB",
                  f"{files['int8']['bytes'] / 1e6:.2f} MB",
                  f"{files['size_ratio']:.2f}x smaller")  # fmt: skip
    for bs, stats in results["speed"].items():
        table.add_row(f"p50 ms, batch {bs}", f"{stats['fp32']['p50']:.3f}",
                      f"{stats['int8']['p50']:.3f}", f"x{stats['ratio']:.2f} faster"
                      if stats["ratio"] >= 1 else f"x{1 / stats['ratio']:.2f} slower")  # fmt: skip
    return table


def results_notes(results: dict[str, Any]) -> list[str]:
    """The lines printed under the table: agreement, kernels, what stayed float, settings."""
    s, acc, env = results["settings"], results["accuracy"], results["environment"]
    lines = []
    if acc:
        lines.append(f"top-1 agreement {100 * acc['agreement']:.2f}% on {acc['images']:,} "
                     f"images ({acc['data']})")  # fmt: skip
    integer = {op: n for op, n in results["runtime_ops"].items() if op.startswith(INTEGER_OPS)}
    lines.append("integer kernels: " + (", ".join(f"{op} {n}" for op, n in integer.items())
                                        or "none"))  # fmt: skip
    left = results["float_ops"]
    lines.append("left in float: " + (", ".join(f"{op} {n}" for op, n in left.items()) or "none"))
    lines.append(
        f"{s['format']}; activations {s['activations']}; weights {s['weights']}; reduce_range "
        f"{'on' if s['reduce_range'] else 'off'} ({s['reduce_range_reason']}); "
        f"{s['calibration_images']:,} calibration images ({s['calibration_data']})"
    )
    lines.append(f"{env['cpu']} ({', '.join(env['isa'])}), {env['threads']} threads")
    return lines
