"""The run report: rows read generically from the manifest, and the files it writes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from compress.manifest import Manifest
from compress.report import write_report
from compress.report.rows import model_rows, teacher_row
from tests.conftest import make_fake_run


def test_rows_join_models_with_the_runtimes_that_timed_them(tmp_path: Path):
    rows = model_rows(Manifest.load(make_fake_run(tmp_path)))
    by_runtime = {(r.stage, r.runtime): r for r in rows}
    assert set(by_runtime) == {("teacher", "teacher_torch"), ("distill", "torch"),
                               ("export", "onnxruntime")}  # fmt: skip
    onnx = by_runtime[("export", "onnxruntime")]
    assert onnx.format == "ONNX" and onnx.top1 == 0.889 and onnx.bytes == 900
    assert onnx.macs == 6_000_000 and set(onnx.latency) == {"1", "8"}
    assert teacher_row(rows).stage == "teacher"


def test_a_new_stage_with_a_model_artifact_gets_a_row_without_code_changes(tmp_path: Path):
    run_dir = make_fake_run(tmp_path)
    manifest = Manifest.load(run_dir)
    (run_dir / "quantize").mkdir()
    (run_dir / "quantize" / "model_int8.onnx").write_bytes(b"q" * 300)
    manifest.stages["quantize"] = {
        "type": "quantize", "status": "done", "metrics": {"top1": 0.885},
        "artifacts": {"onnx": manifest.artifact_record(run_dir / "quantize" / "model_int8.onnx")},
    }  # fmt: skip
    manifest.save()
    rows = model_rows(Manifest.load(run_dir))
    int8 = [r for r in rows if r.stage == "quantize"]
    assert len(int8) == 1 and int8[0].top1 == 0.885 and int8[0].latency == {}
    markdown, _ = write_report(run_dir)
    assert "quantize" in markdown.read_text()


def test_report_files_hold_tables_and_embedded_figures(tmp_path: Path):
    run_dir = make_fake_run(tmp_path)
    markdown, page = write_report(run_dir)
    text = markdown.read_text()
    assert "| teacher | teacher | done |" in text
    assert "10.0x" in text  # teacher p50 / ONNX p50 at batch 1 = 10 ms / 1 ms, about 10x
    for name in ("pareto.png", "latency_cdf.png", "training.png"):
        png = run_dir / "report_files" / name
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"report_files/{name}" in text
    html = page.read_text()
    embedded = html.split('src="data:image/png;base64,')[1:]
    assert len(embedded) == 3
    assert base64.b64decode(embedded[0].split('"')[0]).startswith(b"\x89PNG")
    assert "report_files/" not in html  # self-contained: no links to files beside it
    assert "a 50.0%" in html  # weakest class listed


def test_report_of_an_old_run_without_samples_says_so(tmp_path: Path):
    run_dir = make_fake_run(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["stages"]["bench"]["artifacts"]["samples"]
    del manifest["stages"]["bench"]["metrics"]["models"]  # the vertical slice's bench stage
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    markdown, _ = write_report(run_dir)
    text = markdown.read_text()
    assert "No raw latency samples" in text
    rows = model_rows(Manifest.load(run_dir))
    assert {r.runtime for r in rows} == {"teacher_torch", "torch", "onnxruntime"}


def test_report_command(cli, tmp_path: Path):
    run_dir = make_fake_run(tmp_path / "run")
    result = cli("report", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run_dir / "report.html").is_file()
    missing = cli("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a run directory" in missing.stdout
