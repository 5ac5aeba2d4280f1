"""Inference backends by name: each turns an artifact into ``run(batch: np.ndarray) -> logits``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compress.registry import Registry

Runner = Callable[[np.ndarray], np.ndarray]
BACKENDS: Registry[Callable[[Path, int | None], Runner]] = Registry("bench backend")


@BACKENDS.register("onnxruntime")
def onnxruntime_runner(path: Path, threads: int | None) -> Runner:
    from compress.export.onnx import onnx_session

    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


@BACKENDS.register("torch")
def torch_runner(path: Path, threads: int | None) -> Runner:
    """Eager PyTorch on CPU from one of our model files."""
    from compress.models import load_model

    if threads:
        torch.set_num_threads(threads)
    model, _, _ = load_model(path)
    model.eval().to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return model(x).numpy()

    return run
