"""Gates: what each compares, on hand-made manifests, and their validation before any compute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from compress.config.load import parse_pipeline
from compress.config.pipeline import GatesConfig
from compress.errors import ConfigError
from compress.gates import evaluate_gates
from compress.manifest import Manifest
from tests.conftest import make_fake_run, requires_fashion, tiny_pipeline


def _by_name(results: list[dict]) -> dict[str, dict]:
    return {r["gate"]: r for r in results}


def test_gates_pass_and_fail_on_the_measured_figures(tmp_path: Path):
    # fake run: teacher 90.0%, ONNX 88.9% -> drop 1.1 points; teacher p50 10 ms vs ONNX 1 ms
    manifest = Manifest.load(make_fake_run(tmp_path))
    p99 = manifest.stages["bench"]["metrics"]["latency_ms"]["onnxruntime"]["1"]["p99"]
    results = _by_name(evaluate_gates(
        GatesConfig(max_accuracy_drop=1.0, max_p99_ms=p99 + 0.01, min_speedup=5), manifest
    ))  # fmt: skip
    assert results["max_accuracy_drop"]["measured"] == pytest.approx(1.1)
    assert not results["max_accuracy_drop"]["passed"]
    assert results["max_p99_ms"]["passed"] and results["max_p99_ms"]["measured"] == pytest.approx(
        p99
    )
    assert results["min_speedup"]["passed"] and 8 < results["min_speedup"]["measured"] < 12

    strict = _by_name(evaluate_gates(GatesConfig(max_p99_ms=p99 - 0.01, min_speedup=20), manifest))
    assert (
        not strict["max_p99_ms"]["passed"]
        and "onnxruntime p99 at batch 1" in (strict["max_p99_ms"]["detail"])
    )
    assert not strict["min_speedup"]["passed"]


def test_gate_reads_the_configured_batch_size(tmp_path: Path):
    manifest = Manifest.load(make_fake_run(tmp_path))
    p99_at_8 = manifest.stages["bench"]["metrics"]["latency_ms"]["onnxruntime"]["8"]["p99"]
    (result,) = evaluate_gates(GatesConfig(max_p99_ms=100, batch_size=8), manifest)
    assert result["measured"] == pytest.approx(p99_at_8)


def test_a_gate_that_was_not_measured_fails(tmp_path: Path):
    manifest = Manifest.load(make_fake_run(tmp_path))
    del manifest.stages["bench"]["metrics"]["latency_ms"]["teacher_torch"]
    (result,) = evaluate_gates(GatesConfig(min_speedup=2), manifest)
    assert not result["passed"] and result["measured"] is None
    assert "not measured" in result["detail"]


def test_no_gates_no_results(tmp_path: Path):
    assert evaluate_gates(GatesConfig(), Manifest.load(make_fake_run(tmp_path))) == []


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ({"max_p99_ms": 5, "batch_size": 4}, "gates.batch_size 4 is not in bench.batch_sizes"),
        ({"max_p99_ms": 5, "max_speedup": 3}, "unknown key 'gates.max_speedup'"),
        ({"min_speedup": -1}, "gates.min_speedup: Input should be greater than 0"),
    ],
)
def test_gates_are_validated_with_the_pipeline(gates: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(tiny_pipeline(gates=gates))


def test_gates_need_a_bench_stage():
    raw = tiny_pipeline(gates={"max_accuracy_drop": 1.0})
    del raw["bench"]
    with pytest.raises(ConfigError, match="need a bench stage"):
        parse_pipeline(raw)


@requires_fashion
def test_run_exits_3_naming_the_failed_gate_and_still_writes_the_report(cli, tmp_path: Path):
    raw = tiny_pipeline(gates={"max_p99_ms": 0.000001, "max_accuracy_drop": 100.0})
    raw["teacher"]["epochs"] = raw["distill"]["epochs"] = 0  # untrained: only the wiring matters
    pipeline = tmp_path / "gated.yaml"
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = tmp_path / "run"
    result = cli("run", str(pipeline), "--run-dir", str(run_dir))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "gate failed: max_p99_ms" in result.stdout
    assert "gate failed: max_accuracy_drop" not in result.stdout
    gates = _by_name(json.loads((run_dir / "manifest.json").read_text())["gates"])
    assert not gates["max_p99_ms"]["passed"] and gates["max_accuracy_drop"]["passed"]
    assert (run_dir / "report.md").is_file()
    html = (run_dir / "report.html").read_text()
    assert "max_p99_ms" in html and "data:image/png;base64," in html
    samples = np.load(run_dir / "bench" / "latency_samples.npz")
    assert {"onnxruntime/1", "torch/1", "teacher_torch/1"} <= set(samples.files)
