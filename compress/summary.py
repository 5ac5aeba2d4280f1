"""The end-of-run summary: every model along the way, on screen and as Markdown."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from compress.manifest import Manifest

COLUMNS = ("model", "top1", "params", "size", "batch", "p50 ms", "p99 ms", "img/s")
BACKEND_LABELS = {
    "onnxruntime": "{onnx} ONNX, onnxruntime",
    "onnxruntime-fp32": "{onnx} FP32 twin ONNX, onnxruntime",
    "torch": "student, PyTorch eager",
    "teacher_torch": "teacher, PyTorch eager",
}


def model_rows(manifest: Manifest) -> list[dict[str, str]]:
    """One row per model (and per batch size where latency was measured), formatted."""
    rows: list[dict[str, str]] = []
    stages = manifest.stages
    for name, entry in stages.items():
        if entry.get("status") != "done":
            continue
        metrics = entry.get("metrics", {})
        if "model" in entry.get("artifacts", {}) and "top1" in metrics:  # every trained model
            rows.append({"model": f"{name}, PyTorch", "top1": _pct(metrics.get("top1")),
                         "params": _millions(metrics.get("params")),
                         "size": _mb(_bytes(entry, "model"))})  # fmt: skip
        if entry["type"] == "bench":
            rows.extend(_bench_rows(entry, stages))
    return rows


def _bench_rows(entry: dict[str, Any], stages: dict[str, Any]) -> list[dict[str, str]]:
    metrics = entry.get("metrics", {})
    onnx_stage = entry["inputs"]["onnx"]["stage"]
    rows = []
    for backend, per_batch in metrics.get("latency_ms", {}).items():
        head = {"model": BACKEND_LABELS.get(backend, backend).format(onnx=onnx_stage)}
        if backend == "onnxruntime":
            head["top1"] = _pct(metrics.get("top1"))
            head["size"] = _mb(_bytes(stages.get(onnx_stage, {}), "onnx"))
        if backend == "onnxruntime-fp32":
            head["top1"] = _pct(metrics.get("fp32_onnx_top1"))
            head["size"] = _mb(_bytes(stages.get(onnx_stage, {}), "onnx_fp32"))
        for bs, stats in per_batch.items():
            timing = {
                "batch": bs,
                "p50 ms": f"{stats['p50']:.3f}",
                "p99 ms": f"{stats['p99']:.3f}",
                "img/s": f"{stats['throughput']:,.0f}",
            }
            rows.append({**head, **timing})
            head = {}
    return rows


def _bytes(entry: dict[str, Any], artifact: str) -> int | None:
    return entry.get("artifacts", {}).get(artifact, {}).get("bytes")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


def summary_table(manifest: Manifest) -> Table:
    table = Table(title=f"run {manifest.data.get('pipeline', {}).get('name', '')}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in model_rows(manifest):
        table.add_row(*[row.get(c, "") for c in COLUMNS])
    return table


def summary_markdown(manifest: Manifest) -> str:
    lines = [f"# Run `{manifest.data.get('pipeline', {}).get('name', '')}`", ""]
    lines += ["| stage | type | status | seconds |", "|---|---|---|---|"]
    for name, entry in manifest.stages.items():
        lines.append(
            f"| {name} | {entry['type']} | {entry['status']} | {entry.get('seconds', '-')} |"
        )
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in model_rows(manifest):
        lines.append("| " + " | ".join(row.get(c, "") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
