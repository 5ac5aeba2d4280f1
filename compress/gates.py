"""Gates: the pipeline's pass/fail limits, evaluated on the manifest after the stages ran.

What each gate compares is defined once, here and in ``GatesConfig``'s docstring. A gate whose
figure was not measured fails (saying so): a CI gate that silently passes is worse than none.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from compress.config.pipeline import GatesConfig
from compress.manifest import Manifest

EXIT_GATE_FAILED = 3


def evaluate_gates(gates: GatesConfig, manifest: Manifest) -> list[dict[str, Any]]:
    """One ``{"gate", "limit", "measured", "passed", "detail"}`` per active gate."""
    active = gates.active()
    if not active:
        return []
    bench = _last_bench(manifest)
    metrics = bench.get("metrics", {}) if bench else {}
    bs = str(gates.batch_size)
    latency = metrics.get("latency_ms", {})
    results = []
    for gate, limit in active.items():
        if gate == "max_accuracy_drop":
            teacher, onnx = metrics.get("teacher_top1"), metrics.get("top1")
            measured = None if teacher is None or onnx is None else 100 * (teacher - onnx)
            what = "teacher top-1 - ONNX top-1 (points)"
        elif gate == "max_p99_ms":
            measured = latency.get("onnxruntime", {}).get(bs, {}).get("p99")
            what = f"ONNX onnxruntime p99 at batch {bs} (ms)"
        else:  # min_speedup
            teacher_p50 = latency.get("teacher_torch", {}).get(bs, {}).get("p50")
            onnx_p50 = latency.get("onnxruntime", {}).get(bs, {}).get("p50")
            measured = None if not teacher_p50 or not onnx_p50 else teacher_p50 / onnx_p50
            what = f"teacher PyTorch p50 / ONNX onnxruntime p50 at batch {bs}"
        results.append(_verdict(gate, limit, measured, what))
    return results


def _verdict(gate: str, limit: float, measured: float | None, what: str) -> dict[str, Any]:
    if measured is None:
        return {"gate": gate, "limit": limit, "measured": None, "passed": False,
                "detail": f"{what}: not measured by the last bench stage"}  # fmt: skip
    passed = measured >= limit if gate.startswith("min_") else measured <= limit
    sign = (">=" if passed else "<") if gate.startswith("min_") else ("<=" if passed else ">")
    return {"gate": gate, "limit": limit, "measured": round(measured, 6), "passed": passed,
            "detail": f"{what}: {measured:.3f} {sign} {limit:g}"}  # fmt: skip


def _last_bench(manifest: Manifest) -> dict[str, Any] | None:
    benches = [e for e in manifest.stages.values() if e.get("type") == "bench"]
    done = [e for e in benches if e.get("status") == "done"]
    return done[-1] if done else None


def gates_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="gates")
    for column in ("gate", "limit", "measured", "result"):
        table.add_column(column, justify="left" if column == "gate" else "right")
    for r in results:
        measured = "-" if r["measured"] is None else f"{r['measured']:.3f}"
        verdict = "[green]pass[/]" if r["passed"] else "[bold red]FAIL[/]"
        table.add_row(r["gate"], f"{r['limit']:g}", measured, verdict)
    return table
