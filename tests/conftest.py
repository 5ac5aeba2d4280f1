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

torch.set_num_threads(min(2, os.cpu_count() or 1))


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


def fashion_available() -> bool:
    from compress.data.datasets import _fashion_folder

    return _fashion_folder(None)[0] is not None


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
