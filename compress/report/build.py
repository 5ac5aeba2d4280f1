"""Assemble the report of a run directory as a list of blocks (headings, text, tables, figures)
that ``render`` turns into Markdown and into one self-contained HTML page."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from compress.bench.samples import load_samples
from compress.manifest import Manifest
from compress.report import plots
from compress.report.rows import (
    ModelRow,
    batch_sizes,
    bench_targets,
    model_rows,
    runtime_name,
    teacher_row,
)

NO_SAMPLES = (
    "No raw latency samples in this run (no bench stage, or one written by an older version: "
    "run `compress run` again to measure them)."
)


@dataclass
class Block:
    kind: str  # h1 | h2 | p | table | figure
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    png: bytes | None = None
    name: str = ""  # file name of a figure


def build_report(manifest: Manifest) -> list[Block]:
    pipeline = manifest.data.get("pipeline", {})
    rows = model_rows(manifest)
    blocks = [Block("h1", f"Run report: {pipeline.get('name', manifest.run_dir.name)}")]
    if pipeline.get("config", {}).get("description"):
        blocks.append(Block("p", pipeline["config"]["description"]))
    blocks += _summary(manifest)
    blocks += _gates(manifest)
    blocks += _models(rows)
    blocks += _figures(manifest, rows)
    blocks += _environment(manifest)
    return blocks


def _summary(manifest: Manifest) -> list[Block]:
    pipeline = manifest.data.get("pipeline", {})
    stages = manifest.stages
    total = sum(e.get("seconds") or 0 for e in stages.values())
    text = (
        f"Config hash `{pipeline.get('config_hash', '?')[:12]}`; {len(stages)} stages, "
        f"{total:,.0f} s of stage time in the runs that produced them."
    )
    table = [[name, e["type"], e["status"], _seconds(e.get("seconds")), _headline(e)]
             for name, e in stages.items()]  # fmt: skip
    return [Block("h2", "Pipeline"), Block("p", text),
            Block("table", headers=["stage", "type", "status", "seconds", "result"],
                  rows=table)]  # fmt: skip


def _headline(entry: dict[str, Any]) -> str:
    m = entry.get("metrics", {})
    if entry.get("status") == "failed":
        return f"error: {entry.get('error', '?')}"
    if "max_abs_diff" in m:
        diff, agree = m["max_abs_diff"], m["top1_agreement"]
        return f"max abs logit diff {diff:.1e}, top-1 agreement {agree:.4f}"
    if "top1" in m:
        extra = f", ECE {100 * m['ece']:.2f}%" if "ece" in m else ""
        return f"top-1 {100 * m['top1']:.2f}%{extra}"
    return ""


def _gates(manifest: Manifest) -> list[Block]:
    results = manifest.data.get("gates") or []
    if not results:
        return []
    table = [
        [r["gate"], f"{r['limit']:g}", "-" if r["measured"] is None else f"{r['measured']:.3f}",
         "pass" if r["passed"] else "**FAIL**", r["detail"]]
        for r in results
    ]  # fmt: skip
    failed = [r["gate"] for r in results if not r["passed"]]
    verdict = f"Failed: {', '.join(failed)}." if failed else "All gates passed."
    return [Block("h2", "Gates"), Block("p", verdict),
            Block("table", headers=["gate", "limit", "measured", "result", "what"],
                  rows=table)]  # fmt: skip


def _models(rows: list[ModelRow]) -> list[Block]:
    if not rows:
        return []
    ref = teacher_row(rows)
    sizes = batch_sizes(rows)
    widest = sizes[-1] if sizes else None
    headers = ["model", "runtime", "top-1", "Δ top-1", "ECE", "params", "MACs", "size"]
    headers += [f"p50 / p99 ms (b={bs})" for bs in sizes]
    headers += [f"img/s (b={widest})"] if widest else []
    headers += [f"speedup (b={bs})" for bs in sizes]
    headers += ["smaller"]
    table = []
    for r in rows:
        line = [r.name, r.runtime_name, _pct(r.top1), _delta(r, ref), _pct(r.ece),
                _count(r.params), _count(r.macs), _mb(r.bytes)]  # fmt: skip
        line += [_p50_p99(r, bs) for bs in sizes]
        if widest:
            line.append(f"{r.latency[widest]['throughput']:,.0f}" if widest in r.latency else "-")
        line += [_speedup(r, ref, bs) for bs in sizes]
        line.append(_ratio(ref.bytes if ref else None, r.bytes))
        table.append(line)
    note = (
        "One row per model file and the runtime that timed it; b = batch size. Against the "
        "teacher: Δ top-1 in points; speedup = the teacher's p50 (PyTorch eager, CPU) over the "
        "row's p50 at the same batch size, measured in the same bench stage; smaller = teacher "
        "file size over this file's. MACs per image (convolutions and matrix products)."
    )
    return [Block("h2", "Models"), Block("p", note),
            Block("table", headers=headers, rows=table)]  # fmt: skip


def _figures(manifest: Manifest, rows: list[ModelRow]) -> list[Block]:
    blocks = [Block("h2", "Accuracy vs latency")]
    pareto = plots.pareto_plot(rows)
    blocks.append(
        Block("figure", "Test top-1 against p50 latency; up and left is better.", png=pareto,
              name="pareto.png")
        if pareto else Block("p", "No model has both an accuracy and a latency yet.")
    )  # fmt: skip
    blocks.append(Block("h2", "Latency distributions"))
    samples = _samples(manifest)
    cdf = plots.latency_cdf_plot(samples) if samples else None
    blocks.append(
        Block("figure", "Every timed call, sorted: the curve's right tail is the p99 story.",
              png=cdf, name="latency_cdf.png")
        if cdf else Block("p", NO_SAMPLES)
    )  # fmt: skip
    worst = _worst_classes(manifest)
    if worst:
        blocks += [Block("h2", "Weakest classes (ONNX file)"), Block("p", worst)]
    blocks.append(Block("h2", "Training curves"))
    curves = plots.training_plot(_histories(manifest))
    blocks.append(
        Block("figure", "Per epoch: mean training loss and top-1 (train; val when held out).",
              png=curves, name="training.png")
        if curves else Block("p", "No training stage recorded a history.")
    )  # fmt: skip
    return blocks


def _environment(manifest: Manifest) -> list[Block]:
    benches = [e for e in manifest.stages.values() if e.get("type") == "bench"]
    env = next((e["metrics"]["environment"] for e in reversed(benches)
                if "environment" in e.get("metrics", {})), None)  # fmt: skip
    versions = manifest.data.get("versions", {})
    parts = []
    if env:
        gpu = f"; GPU {env['gpu']} (driver {env.get('gpu_driver')})" if env.get("gpu") else ""
        parts.append(
            f"Measured on {env['cpu']} ({', '.join(env['isa']) or 'no AVX2'}), "
            f"{env['cores']} cores, {env['threads']} inference threads{gpu}."
        )
    if versions:
        parts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return [Block("h2", "Environment"), Block("p", " ".join(parts))] if parts else []


def _samples(manifest: Manifest) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    benches = [(n, e) for n, e in manifest.stages.items() if e.get("type") == "bench"]
    for name, entry in benches:
        record = entry.get("artifacts", {}).get("samples")
        path = manifest.run_dir / record["path"] if record else None
        if entry.get("status") == "done" and path and path.is_file():
            prefix = f"{name}: " if len(benches) > 1 else ""
            targets = bench_targets(entry, manifest.stages)
            for label, per_batch in load_samples(path).items():
                stage = targets.get(label, {}).get("stage", "?")
                out[f"{prefix}{stage} · {runtime_name(label)}"] = per_batch
    return out


def _histories(manifest: Manifest) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, entry in manifest.stages.items():
        record = entry.get("artifacts", {}).get("history")
        if record and (manifest.run_dir / record["path"]).is_file():
            out[name] = json.loads((manifest.run_dir / record["path"]).read_text())
    return out


def _worst_classes(manifest: Manifest, n: int = 5) -> str:
    for entry in reversed(list(manifest.stages.values())):
        record = entry.get("artifacts", {}).get("report")
        if entry.get("type") != "bench" or not record:
            continue
        path = manifest.run_dir / record["path"]
        per_class = json.loads(path.read_text()).get("per_class_top1") if path.is_file() else None
        if per_class:
            ranked = sorted((v, k) for k, v in per_class.items() if v is not None)[:n]
            return ", ".join(f"{k} {100 * v:.1f}%" for v, k in ranked) + "."
    return ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _p50_p99(row: ModelRow, bs: str) -> str:
    s = row.latency.get(bs)
    return "-" if s is None else f"{_ms(s['p50'])} / {_ms(s['p99'])}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _delta(row: ModelRow, ref: ModelRow | None) -> str:
    if ref is None or ref.top1 is None or row.top1 is None:
        return "-"
    return f"{100 * (row.top1 - ref.top1):+.2f} pts"


def _speedup(row: ModelRow, ref: ModelRow | None, bs: str) -> str:
    if ref is None or bs not in row.latency or bs not in ref.latency:
        return "-"
    return f"{ref.latency[bs]['p50'] / row.latency[bs]['p50']:.1f}x"


def _ratio(reference: int | None, value: int | None) -> str:
    return "-" if not reference or not value else f"{reference / value:.1f}x"


def figure_files(blocks: list[Block]) -> dict[str, bytes]:
    return {b.name: b.png for b in blocks if b.kind == "figure" and b.png is not None}
