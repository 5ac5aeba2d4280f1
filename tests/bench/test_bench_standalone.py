"""``compress bench`` on a classifier exported by someone else, its JSON, --compare and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from compress.data.module import Preprocess
from compress.models import ModelSpec, build_model, save_model
from tests.conftest import requires_fashion

FAST = ("--min-iterations", "20", "--min-seconds", "0", "--warmup-iterations", "2",
        "--warmup-seconds", "0")  # fmt: skip
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "p99_9", "max", "throughput")


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a user's own script produces: a torchvision model and a bare torch.onnx.export call
    (no metadata, no dynamic batch, no input name of ours)."""
    path = tmp_path_factory.mktemp("plain") / "classifier.onnx"
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 28, 28),), str(path))
    return path


@requires_fashion
def test_bench_a_plain_torchvision_onnx_file_with_a_dataset(cli, plain_onnx: Path, tmp_path: Path):
    out = tmp_path / "figures.json"
    result = cli("bench", str(plain_onnx), "--dataset", "fashion-mnist", "--limit", "64",
                 "--teacher", str(plain_onnx), *FAST, "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert set(figures["latency_ms"]) == {"1"}  # the graph's batch is fixed at 1
    stats = figures["latency_ms"]["1"]
    for key in LATENCY_KEYS:
        assert isinstance(stats[key], float) and stats[key] > 0, key
    assert stats["iterations"] >= 20 and stats["p50"] <= stats["p99"] <= stats["max"]
    assert figures["backend"] == "onnxruntime" and figures["input"]["shape"] == [1, 3, 28, 28]
    model = figures["model"]
    assert model["format"] == "onnx" and model["params"] > 100_000 and model["macs"] > 100_000
    assert model["bytes"] == plain_onnx.stat().st_size
    accuracy = figures["accuracy"]
    assert accuracy["images"] == 64 and accuracy["dataset"] == "fashion-mnist"
    for key in ("top1", "top5", "ece"):
        assert 0.0 <= accuracy[key] <= 1.0
    assert len(accuracy["per_class_top1"]) == 10 and "Sneaker" in accuracy["per_class_top1"]
    assert accuracy["teacher"]["agreement"] == 1.0  # the same file agrees with itself
    env = figures["environment"]
    assert env["cores"] >= 1 and isinstance(env["isa"], list) and "torch" in env["versions"]
    assert figures["plan"]["min_iterations"] == 20


def test_compare_two_json_files(cli, tmp_path: Path):
    def results(p50: float, size: int) -> dict:
        stats = {"p50": p50, "p99": 2 * p50, "mean": p50, "throughput": 1000 / p50}
        return {"artifact": f"m{size}.onnx", "backend": "onnxruntime",
                "latency_ms": {"1": stats}, "model": {"params": size, "macs": size,
                                                     "bytes": size}}  # fmt: skip

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(results(4.0, 4_000_000)))
    b.write_text(json.dumps(results(1.0, 1_000_000)))
    result = cli("bench", "--compare", str(a), str(b))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4.00x faster" in result.stdout and "4.00x smaller" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "torch"], "torch runs our model.pt files"),
        # the file is checked before the device: the wrong file kind is what to fix first
        (["--backend", "tensorrt"], "tensorrt runs TensorRT engines (.engine, .plan), not"),
        (["--backend", "tensorrtt"], "unknown bench backend 'tensorrtt'"),
        (["--batch-sizes", "1,x"], "--batch-sizes expects numbers"),
    ],
)
def test_bench_mistakes_get_one_line(cli, plain_onnx: Path, args: list[str], message: str):
    result = cli("bench", str(plain_onnx), *args, *FAST)
    said = " ".join(result.stdout.split())  # as one line, however the console wrapped it
    assert result.returncode == 2 and message in said, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_without_a_gpu_is_a_clear_error(cli, plain_onnx: Path):
    result = cli("bench", str(plain_onnx), "--device", "cuda", *FAST)
    assert result.returncode == 2 and "cuda" in result.stdout and "Traceback" not in result.stdout


@pytest.mark.parametrize(
    ("device", "says"),
    [
        (["--device", "cpu"], "torch-cudagraph runs on cuda only, not on cpu: give --device cuda"),
        # no --device: a GPU-only backend defaults to cuda, which this machine lacks
        pytest.param([], "torch-cudagraph on cuda: no CUDA device is available here",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    ],
)  # fmt: skip
def test_cuda_graphs_need_a_cuda_device_and_say_so(cli, tmp_path: Path, device, says):
    spec = ModelSpec(arch="mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.25)
    path = tmp_path / "model.pt"
    preprocess = Preprocess(size=16, channels=1, mean=(0.5,), std=(0.5,)).metadata()
    save_model(build_model(spec).eval(), spec, path, {"role": "student", "preprocess": preprocess})
    result = cli("bench", str(path), "--backend", "torch-cudagraph", *device, *FAST)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in " ".join(result.stdout.split())
    assert "Traceback" not in result.stdout + result.stderr
