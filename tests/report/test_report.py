"""The run report: rows read generically from the manifest, and the files it writes, on the
manifest of a real tiny run (``tiny_run``: teacher, distill, export, bench)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from compress.manifest import Manifest
from compress.report import write_report
from compress.report.rows import model_rows, teacher_row


def bench_metrics(run_dir: Path) -> dict:
    return Manifest.load(run_dir).stages["bench"]["metrics"]


def test_rows_join_models_with_the_runtimes_that_timed_them(tiny_run: Path):
    rows = model_rows(Manifest.load(tiny_run))
    by_runtime = {(r.stage, r.runtime): r for r in rows}
    assert set(by_runtime) == {("teacher", "teacher_torch"), ("distill", "torch"),
                               ("export", "onnxruntime")}  # fmt: skip
    bench = bench_metrics(tiny_run)
    onnx = by_runtime[("export", "onnxruntime")]
    assert onnx.format == "ONNX" and onnx.top1 == bench["top1"]
    assert onnx.bytes == (tiny_run / "export" / "model.onnx").stat().st_size
    assert onnx.macs == bench["models"]["onnxruntime"]["macs"] > 0
    assert set(onnx.latency) == {"1"}  # tiny_pipeline benches batch 1
    assert onnx.latency["1"] == bench["latency_ms"]["onnxruntime"]["1"]
    assert by_runtime[("distill", "torch")].arch == "mobilenet_v2"
    assert teacher_row(rows).stage == "teacher"


def test_a_new_stage_with_a_model_artifact_gets_a_row_without_code_changes(tiny_run: Path):
    manifest = Manifest.load(tiny_run)
    (tiny_run / "quantize").mkdir()
    (tiny_run / "quantize" / "model_int8.onnx").write_bytes(b"q" * 300)
    manifest.stages["quantize"] = {
        "type": "quantize", "status": "done", "metrics": {"top1": 0.885},
        "artifacts": {"onnx": manifest.artifact_record(tiny_run / "quantize" / "model_int8.onnx")},
    }  # fmt: skip
    manifest.save()
    rows = model_rows(Manifest.load(tiny_run))
    int8 = [r for r in rows if r.stage == "quantize"]
    assert len(int8) == 1 and int8[0].top1 == 0.885 and int8[0].latency == {}
    markdown, _ = write_report(tiny_run)
    assert "quantize" in markdown.read_text()


def test_report_files_hold_tables_and_embedded_figures(tiny_run: Path):
    markdown, page = write_report(tiny_run)
    text = markdown.read_text()
    assert "| teacher | teacher | done |" in text
    latency = bench_metrics(tiny_run)["latency_ms"]
    speedup = latency["teacher_torch"]["1"]["p50"] / latency["onnxruntime"]["1"]["p50"]
    assert f"{speedup:.1f}x" in text  # teacher p50 / ONNX p50 at batch 1
    for name in ("pareto.png", "latency_cdf.png", "training.png"):
        png = tiny_run / "report_files" / name
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"report_files/{name}" in text
    html = page.read_text()
    embedded = html.split('src="data:image/png;base64,')[1:]
    assert len(embedded) == 3
    assert base64.b64decode(embedded[0].split('"')[0]).startswith(b"\x89PNG")
    assert "report_files/" not in html  # self-contained: no links to files beside it
    per_class = json.loads((tiny_run / "bench" / "bench.json").read_text())["per_class_top1"]
    weakest = min(per_class, key=lambda k: (per_class[k], k))
    assert f"{weakest} {100 * per_class[weakest]:.1f}%" in html  # weakest class listed


def test_report_of_an_old_run_without_samples_says_so(tiny_run: Path):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    del manifest["stages"]["bench"]["artifacts"]["samples"]
    del manifest["stages"]["bench"]["metrics"]["models"]  # the vertical slice's bench stage
    (tiny_run / "manifest.json").write_text(json.dumps(manifest))
    markdown, _ = write_report(tiny_run)
    text = markdown.read_text()
    assert "No raw latency samples" in text
    rows = model_rows(Manifest.load(tiny_run))
    assert {r.runtime for r in rows} == {"teacher_torch", "torch", "onnxruntime"}


def test_report_command(cli, tiny_run: Path, tmp_path: Path):
    result = cli("report", str(tiny_run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tiny_run / "report.html").is_file()
    missing = cli("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a run directory" in missing.stdout
