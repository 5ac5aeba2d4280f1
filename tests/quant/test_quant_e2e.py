"""INT8 through the CLI: distill -> ptq and qat -> export INT8 + FP32 twin -> bench side by side."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from compress.bench.backends import BackendOptions, load_runner
from compress.errors import CompressError
from tests.conftest import requires_fashion, tiny_pipeline


def int8_pipeline(**overrides) -> dict:
    raw = tiny_pipeline()
    bench = {**raw.pop("bench"), "backends": ["onnxruntime"], "batch_sizes": [1, 8],
             "ratio_rounds": 2, "include_teacher": False}  # fmt: skip
    raw.pop("export")
    raw["ptq"] = {"calibration_images": 64}
    raw["qat"] = {"input": "distill", "epochs": 1, "calibration_images": 64, "augment": "none"}
    raw["export"] = {"parity_images": 0, "min_agreement": 0.9}
    raw["bench"] = bench
    raw.update(overrides)
    return raw


@pytest.mark.e2e
@requires_fashion
def test_int8_pipeline_ships_int8_beside_fp32_and_measures_both(tmp_path: Path, cli):
    pipeline = tmp_path / "int8.yaml"
    pipeline.write_text(yaml.safe_dump(int8_pipeline(), sort_keys=False))
    result = cli("run", str(pipeline), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]

    ptq, qat = stages["ptq"]["metrics"], stages["qat"]["metrics"]
    assert ptq["quant"] == {"target": "onnxruntime", "reduce_range": True, "float_layers": []}
    assert ptq["calibration_images"] == qat["calibration_images"] == 64
    assert qat["float_top1"] == stages["distill"]["metrics"]["top1"]
    assert qat["qat_gain_over_ptq"] == pytest.approx(qat["top1"] - qat["ptq_top1"])
    assert stages["qat"]["artifacts"]["float_model"]["path"] == "distill/model.pt"

    export = stages["export"]
    assert export["inputs"]["student"]["stage"] == "qat"
    assert {"onnx", "onnx_fp32"} <= set(export["artifacts"])
    ops = export["metrics"]["runtime_ops"]
    assert ops["QLinearConv"] > 0 and ops["QLinearAdd"] > 0, ops
    assert "Conv" not in ops and "FusedConv" not in ops and "Add" not in ops, ops
    assert export["metrics"]["fp32"]["max_abs_diff"] < 1e-3
    assert export["artifacts"]["onnx"]["bytes"] < export["artifacts"]["onnx_fp32"]["bytes"]

    bench = stages["bench"]["metrics"]
    assert set(bench["int8_speedup"]) == {"1", "8"}
    assert all(r > 0 for r in bench["int8_speedup"].values())
    assert {"onnxruntime", "onnxruntime-fp32"} <= set(bench["latency_ms"])
    assert bench["top1_delta_vs_fp32"] == pytest.approx(bench["top1"] - bench["fp32_onnx_top1"])
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "qat mobilenet_v2 (PyTorch INT8)" in summary
    assert "export mobilenet_v2 (ONNX FP32), onnxruntime" in summary


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_tensorrt_export_without_tensorrt_names_the_extra(tmp_path: Path, cli, fake_fashion):
    raw = tiny_pipeline()
    raw["data"] = {**raw["data"], "root": str(fake_fashion), "train_subset": 60,
                   "test_subset": 20}  # fmt: skip
    raw["teacher"]["epochs"] = 0
    raw["distill"]["epochs"] = 0
    raw["export"] = {"formats": ["onnx", "tensorrt"]}
    raw.pop("bench")
    pipeline = tmp_path / "trt.yaml"
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli("run", str(pipeline), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "TensorRT is not installed" in result.stdout + result.stderr
    assert "compress[tensorrt]" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_qat_refuses_feature_methods_with_the_reason(tmp_path: Path, cli):
    raw = int8_pipeline()
    pair = {"student": "features.18", "teacher": "layer4"}
    raw["qat"]["method"] = {"name": "fitnets", "pairs": [pair]}
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli("validate", str(pipeline))
    assert result.returncode == 2
    assert "qat distils from logits" in result.stdout + result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_benching_an_engine_without_tensorrt_names_the_extra(tmp_path: Path, cli, monkeypatch):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    sidecar = {"input_shape": ["batch", 1, 28, 28], "preprocess": None, "labels": None}
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    # backend chosen by the suffix: tensorrt, and with it the device: cuda
    result = cli("bench", str(engine))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert "Traceback" not in output
    if not torch.cuda.is_available():
        assert "tensorrt on cuda: no CUDA device is available here" in output
    # on a GPU machine without TensorRT the missing library is what stops it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CompressError, match=re.escape("pip install 'compress[tensorrt]'")):
        load_runner("tensorrt", engine, BackendOptions())


@pytest.mark.e2e
@requires_fashion
def test_ptq_and_qat_run_under_torchrun_with_two_processes(tmp_path: Path):
    """Both stages evaluate with sharded, all-reduced counts, so every process must run them
    (a rank-0-only stage calling evaluate would wait forever for the others)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    raw = {
        "name": "ddp_int8",
        "data": {"dataset": "fashion-mnist", "train_subset": 256, "test_subset": 128,
                 "image_size": 16, "batch_size": 16},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "method": "baseline", "augment": "none"},
        "ptq": {"calibration_images": 32},
        "qat": {"input": "distill", "epochs": 1, "method": "baseline", "calibration_images": 32,
                "augment": "none"},
    }  # fmt: skip
    pipeline = tmp_path / "ddp.yaml"
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "compress", "run", str(pipeline), "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["ptq"]["status"] == stages["qat"]["status"] == "done"
    assert "ptq_top1" in stages["qat"]["metrics"]
