"""The CLI as a user runs it: a real pipeline on a Fashion-MNIST subset, and user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from tests.conftest import ROOT, requires_fashion, tiny_pipeline

E2E = {
    "name": "e2e",
    "data": {"dataset": "fashion-mnist", "train_subset": 2000, "test_subset": 1000,
             "batch_size": 64},
    "teacher": {"model": {"arch": "resnet34", "stem": "compact"}, "epochs": 1, "lr": 0.05,
                "augment": "none"},
    "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.5, "stem": "compact"},
                "epochs": 2, "lr": 0.05,
                "method": {"name": "kd", "temperature": 4.0, "alpha": 0.5}, "augment": "none"},
    "export": {"parity_images": 500},
    "bench": {"batch_sizes": [1, 8], "min_iterations": 20, "min_seconds": 0.1,
              "warmup_iterations": 2, "warmup_seconds": 0.0,
              "backends": ["onnxruntime", "torch", "torch-cudagraph"]},  # the last: cuda only
}  # fmt: skip


@pytest.mark.e2e
@requires_fashion
def test_quickstart_shaped_run_end_to_end(cli, tmp_path: Path):
    pipeline = tmp_path / "e2e.yaml"
    pipeline.write_text(yaml.safe_dump(E2E, sort_keys=False))
    run_dir = tmp_path / "run"
    result = cli("run", str(pipeline), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr

    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    assert [s["status"] for s in stages.values()] == ["done"] * 4
    for entry in stages.values():
        for record in entry["artifacts"].values():
            assert (run_dir / record["path"]).is_file() and len(record["sha256"]) == 64
    assert stages["teacher"]["metrics"]["top1"] > 0.5  # chance is 0.1
    assert stages["distill"]["metrics"]["top1"] > 0.5
    assert stages["export"]["metrics"]["top1_agreement"] >= 0.99
    bench = stages["bench"]["metrics"]
    assert abs(bench["top1"] - stages["distill"]["metrics"]["top1"]) <= 0.002
    for backend in ("onnxruntime", "torch", "teacher_torch"):
        for key in ("mean", "p50", "p90", "p95", "p99", "throughput"):
            assert bench["latency_ms"][backend]["8"][key] > 0
    assert "torch-cudagraph: runs on cuda only; add cuda to devices" in bench["skipped"]
    assert (run_dir / "teacher" / "tensorboard").is_dir()
    assert (run_dir / "summary.md").read_text().count("|") > 20

    model = onnx.load(str(run_dir / stages["export"]["artifacts"]["onnx"]["path"]))
    meta = {
        p.key: json.loads(p.value)
        for p in model.metadata_props
        if p.key in ("preprocess", "labels")
    }
    assert meta["preprocess"]["size"] == [28, 28] and meta["preprocess"]["channels"] == 1
    assert meta["labels"][0] == "T-shirt/top" and len(meta["labels"]) == 10
    assert model.opset_import[0].version >= 17

    again = cli("run", str(pipeline), "--run-dir", str(run_dir))
    assert again.returncode == 0
    assert again.stdout.count("unchanged, skipped") == 4

    changed = cli("run", str(pipeline), "--run-dir", str(run_dir), "--set", "bench.batch_sizes=[2]")
    assert changed.returncode == 0
    assert changed.stdout.count("unchanged, skipped") == 3

    rerun = cli("run", str(pipeline), "--run-dir", str(run_dir), "--rerun", "bench")
    assert rerun.returncode == 0 and rerun.stdout.count("unchanged, skipped") == 3
    typo = cli("run", str(pipeline), "--run-dir", str(run_dir), "--rerun", "bnch")
    assert typo.returncode == 2 and "no stage 'bnch' (did you mean 'bench'?)" in typo.stdout

    onnx_path = run_dir / "export" / "model.onnx"
    report = tmp_path / "bench.json"
    standalone = cli("bench", str(onnx_path), "--dataset", "fashion-mnist", "--batch-sizes", "1,4",
                     "--min-seconds", "0.2", "--json", str(report))  # fmt: skip
    assert standalone.returncode == 0, standalone.stdout + standalone.stderr
    figures = json.loads(report.read_text())
    assert set(figures["latency_ms"]) == {"1", "4"}
    assert figures["accuracy"]["images"] == 10000 and figures["accuracy"]["top1"] > 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.temprature=2", "unknown key 'distill.temprature'"),
        (
            "distill.method.temperature=0",
            "distill.method.temperature: Input should be greater than 0",
        ),
        ("teacher.model.arch=resnet35", "unknown model 'resnet35'"),
    ],
)
def test_user_mistakes_get_one_line_and_no_traceback(cli, tmp_path: Path, override, message):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(tiny_pipeline(), sort_keys=False))
    result = cli("validate", str(pipeline), "--set", override)
    out = result.stdout + result.stderr
    assert result.returncode == 2
    assert message in out and "Traceback" not in out


def test_validate_prints_resolved_config(cli, tmp_path: Path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(tiny_pipeline(), sort_keys=False))
    result = cli("validate", str(pipeline))
    assert result.returncode == 0, result.stdout + result.stderr
    resolved = yaml.safe_load(result.stdout.split("✓")[0])
    assert resolved["distill"]["method"]["temperature"] == 4.0


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "bench", "methods"):
        assert command in result.stdout


HELP_PROBE = """
import sys
from typer.testing import CliRunner
from compress.cli import app
assert CliRunner().invoke(app, ["--help"]).exit_code == 0
print(sorted(m for m in ("torch", "onnx", "onnxruntime", "torchvision") if m in sys.modules))
"""


def test_help_loads_no_model_library_and_lists_registry_names_when_shown(cli):
    """compress --help answers in about a second: no torch/onnx import for it. The names that
    bench and data fetch list in their help come from the registries when that help is shown."""
    probe = subprocess.run([sys.executable, "-c", HELP_PROBE], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().splitlines()[-1] == "[]"
    bench = cli("bench", "--help")
    assert "onnxruntime | tensorrt" in bench.stdout and "torch-compile" in bench.stdout
    fetch = cli("data", "fetch", "--help")
    assert "fashion-mnist" in fetch.stdout and "{fetchable}" not in fetch.stdout
