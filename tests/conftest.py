"""Shared fixtures: tiny configs, a CLI runner, and the Fashion-MNIST location."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# `make test` runs pytest-xdist workers, one per core: each worker, and every CLI process its
# tests start (they inherit OMP_NUM_THREADS), takes its share of the cores, not all of them
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m compress ARGS`` as a user would; returns the finished process."""
    env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "compress", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts ``Tensor.item()`` calls (host reads of a device value; on a GPU each one waits
    for the queued work) from here to the end of the test: ``host_reads["n"]``."""
    reads = {"n": 0}
    item = torch.Tensor.item

    def counted_item(self: torch.Tensor):
        reads["n"] += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    return reads


def run_pipeline_dict(pipeline: dict, tmp_path: Path) -> tuple[str, dict]:
    """Write ``pipeline`` as YAML, ``compress run`` it into tmp_path/run; asserts it succeeded.

    Returns the command's output and the manifest's stages."""
    import json

    import yaml

    path = tmp_path / f"{pipeline['name']}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    result = run_cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    return out, json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]


def fashion_available() -> bool:
    from compress.data.sources.fashion_mnist import fashion_folder

    return fashion_folder(None)[0] is not None


requires_fashion = pytest.mark.skipif(
    not fashion_available() and not os.environ.get("CI"),
    reason="Fashion-MNIST not installed (make data, or apt-get install dataset-fashion-mnist)",
)


def tiny_pipeline(**overrides) -> dict:
    """A pipeline dict small enough to validate and run in seconds."""
    raw = {
        "name": "tiny",
        "data": {"dataset": "fashion-mnist", "train_subset": 256, "test_subset": 128,
                 "image_size": 16, "batch_size": 32},
        "teacher": {"model": {"arch": "resnet18", "stem": "compact"}, "epochs": 1,
                    "augment": "none"},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "method": "kd", "augment": "none"},
        "export": {"parity_images": 64},
        "bench": {"batch_sizes": [1], "min_iterations": 5, "min_seconds": 0.0,
                  "warmup_iterations": 1, "warmup_seconds": 0.0},
    }  # fmt: skip
    for key, value in overrides.items():
        raw[key] = value
    return raw


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory written by a real ``compress run`` of ``tiny_pipeline()`` (teacher,
    distill, export, bench), once per session; tests copy it (``tiny_run``) before changing it."""
    if not fashion_available() and not os.environ.get("CI"):
        pytest.skip(
            "Fashion-MNIST not installed (make data, or apt-get install dataset-fashion-mnist)"
        )
    import yaml

    folder = tmp_path_factory.mktemp("tiny_run")
    pipeline = folder / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(tiny_pipeline(), sort_keys=False))
    result = run_cli("run", str(pipeline), "--run-dir", str(folder / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "run"


@pytest.fixture
def tiny_run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's real tiny run."""
    import shutil

    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path: Path) -> Path:
    """A Fashion-MNIST-format folder of random images: 60 train, 20 test."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def make_fake_run(run_dir: Path, bench_latency: dict | None = None) -> Path:
    """A finished run directory written by hand (no training): teacher, distill, export, bench,
    with histories, bench.json and raw latency samples; the numbers are made up but consistent."""
    from compress.io import write_json
    from compress.manifest import Manifest

    rng = np.random.default_rng(0)
    manifest = Manifest(run_dir, {"pipeline": {"name": "fake", "config_hash": "0" * 64,
                                               "config": {"stages": {}}}})  # fmt: skip

    def artifact(rel: str, content: bytes) -> dict:
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return manifest.artifact_record(path)

    def history(stage: str, top1s: list[float]) -> dict:
        rows = [{"epoch": i + 1, "loss": 1.0 / (i + 1), "train_top1": t, "seconds": 1.0}
                for i, t in enumerate(top1s)]  # fmt: skip
        write_json(run_dir / stage / "history.json", rows)
        return manifest.artifact_record(run_dir / stage / "history.json")

    stages = manifest.stages
    stages["teacher"] = {
        "type": "teacher",
        "status": "done",
        "seconds": 10.0,
        "inputs": {},
        "metrics": {"top1": 0.90, "top5": 0.99, "params": 21_000_000},
        "artifacts": {
            "model": artifact("teacher/model.pt", b"t" * 4000),
            "history": history("teacher", [0.7, 0.85, 0.9]),
        },
    }
    stages["distill"] = {
        "type": "distill",
        "status": "done",
        "seconds": 8.0,
        "inputs": {"teacher": {"stage": "teacher"}},
        "metrics": {"top1": 0.89, "top5": 0.99, "params": 2_000_000},
        "artifacts": {
            "model": artifact("distill/model.pt", b"s" * 1000),
            "history": history("distill", [0.6, 0.8, 0.88]),
        },
    }
    stages["export"] = {
        "type": "export",
        "status": "done",
        "seconds": 2.0,
        "inputs": {"student": {"stage": "distill", "path": "distill/model.pt"}},
        "metrics": {"max_abs_diff": 1e-5, "top1_agreement": 1.0},
        "artifacts": {"onnx": artifact("export/model.onnx", b"o" * 900)},
    }
    latency = bench_latency or {"onnxruntime": 1.0, "torch": 4.0, "teacher_torch": 10.0}
    stats, samples = {}, {}
    for label, p50 in latency.items():
        stats[label] = {}
        for bs in ("1", "8"):
            times = p50 * int(bs) ** 0.5 * rng.lognormal(0.0, 0.1, 500)
            samples[f"{label}/{bs}"] = times
            stats[label][bs] = {"p50": float(np.percentile(times, 50)),
                                "p99": float(np.percentile(times, 99)),
                                "mean": float(times.mean()),
                                "throughput": int(bs) * 1e3 / float(times.mean())}  # fmt: skip
    models = {
        "onnxruntime": {
            "stage": "export",
            "artifact": "onnx",
            "params": 1_990_000,
            "macs": 6_000_000,
            "top1": 0.889,
            "ece": 0.02,
        },
        "torch": {"stage": "distill", "artifact": "model", "macs": 6_000_000},
        "teacher_torch": {"stage": "teacher", "artifact": "model", "macs": 70_000_000},
    }
    write_json(run_dir / "bench" / "bench.json", {"per_class_top1": {"a": 0.5, "b": 0.95}})
    with open(run_dir / "bench" / "latency_samples.npz", "wb") as handle:
        np.savez(handle, **samples)
    stages["bench"] = {"type": "bench", "status": "done", "seconds": 5.0,
                       "inputs": {"onnx": {"stage": "export"}, "teacher": {"stage": "teacher"}},
                       "metrics": {"latency_ms": stats, "models": models, "top1": 0.889,
                                   "top5": 0.99, "ece": 0.02, "teacher_top1": 0.90},
                       "artifacts": {"report": manifest.artifact_record(run_dir / "bench" /
                                                                        "bench.json"),
                                     "samples": manifest.artifact_record(
                                         run_dir / "bench" / "latency_samples.npz")}}  # fmt: skip
    manifest.save()
    return run_dir
