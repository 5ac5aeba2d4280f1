"""Inference backends by name, one module each in this package: each loads an artifact into a
``Runner``, and says which artifact it runs and how a reader names it (``Backend``).

A runner separates what is timed from what is not. ``prepare`` puts a batch where the model reads
it (a torch tensor in the right dtype and memory format, on the GPU for CUDA) once, outside the
timed loop; ``call`` is one inference and the only thing timed; ``predict`` gives numpy logits
for accuracy. CUDA runners are timed with CUDA events (``time_cuda_calls``).

onnxruntime on CUDA is timed end to end (``session.run`` is synchronous and includes the copies
to and from the GPU), as a user calling it from numpy would see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from compress.bench.timing import TimingPlan, time_calls, time_cuda_calls
from compress.errors import CompressError
from compress.export.tensorrt import ENGINE_SUFFIXES
from compress.registry import BACKENDS

ArtifactKind = Literal["onnx", "engine", "model"]  # an ONNX file, a TensorRT engine, a model.pt
KIND_NAMES = {"onnx": ".onnx files", "engine": "TensorRT engines (.engine, .plan)",
              "model": "our model.pt files"}  # fmt: skip

Device = Literal["cpu", "cuda"]
Dtype = Literal["fp32", "fp16", "bf16"]
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackendUnavailable(CompressError):
    """The backend, device or dtype asked for cannot run on this machine or this artifact."""


@dataclass(frozen=True)
class BackendOptions:
    threads: int | None = None
    device: Device | None = None  # None: the backend's first device (cuda for a GPU-only one)
    dtype: Dtype = "fp32"


@dataclass
class Runner:
    backend: str
    device: Device
    prepare: Callable[[np.ndarray], Any]
    call: Callable[[Any], Any]
    predict: Callable[[np.ndarray], np.ndarray]

    def time(self, batch: np.ndarray, plan: TimingPlan) -> np.ndarray:
        """Latency samples (ms) of ``call`` on this batch."""
        x = self.prepare(batch)
        timer = time_cuda_calls if self.device == "cuda" else time_calls
        return timer(lambda: self.call(x), plan)


@dataclass(frozen=True)
class Backend:
    """What ``BACKENDS`` holds: ``load(path, options) -> Runner``; ``runs``: the artifact kind
    the bench stage hands it; ``title``: the runtime as the report names it; ``devices``: where
    it can run (the bench stage skips the others with a note)."""

    load: Callable[[Path, BackendOptions], Runner]
    runs: ArtifactKind
    title: str
    devices: tuple[Device, ...] = ("cpu", "cuda")


def load_runner(backend: str, path: Path, options: BackendOptions) -> Runner:
    """``backend``'s runner for ``path`` on the device asked for, or on the backend's first
    device when none is; a file or device the backend cannot use is an error here, before it
    loads anything."""
    spec: Backend = BACKENDS.get(backend)
    if artifact_kind(path) != spec.runs:
        raise BackendUnavailable(
            f"{backend} runs {KIND_NAMES[spec.runs]}, not {path.name}: "
            f"use --backend {default_backend(path)} for it"
        )
    device = options.device or spec.devices[0]
    if device not in spec.devices:
        raise BackendUnavailable(
            f"{backend} runs on {' and '.join(spec.devices)} only, not on {device}: "
            f"give --device {spec.devices[0]} (or leave --device out)"
        )
    if device == "cuda" and not torch.cuda.is_available() and spec.runs != "onnx":
        raise BackendUnavailable(f"{backend} on cuda: no CUDA device is available here")
    return spec.load(path, replace(options, device=device))


def artifact_kind(path: Path) -> ArtifactKind:
    if path.suffix in ENGINE_SUFFIXES:
        return "engine"
    return "onnx" if path.suffix == ".onnx" else "model"


def default_backend(path: Path) -> str:
    return {"engine": "tensorrt", "onnx": "onnxruntime", "model": "torch"}[artifact_kind(path)]
