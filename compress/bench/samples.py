"""The raw latency samples of a bench stage, ``latency_samples.npz``: one array (ms) per
``<label>/<batch>``, written by the stage and read back by the report for its distributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.io import atomic_path

SAMPLES_FILE = "latency_samples.npz"


def save_samples(folder: Path, samples: dict[str, np.ndarray]) -> Path:
    """``samples`` keyed ``<label>/<batch>``; written atomically; returns the file."""
    path = folder / SAMPLES_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **samples)
    return path


def load_samples(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{label: {batch: latencies_ms}}`` from a stage's ``latency_samples.npz``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as stored:
        for key in stored.files:
            label, _, bs = key.rpartition("/")
            out.setdefault(label, {})[bs] = stored[key]
    return out
