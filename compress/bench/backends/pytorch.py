"""torch, torch-compile: our model.pt in PyTorch, eager or through torch.compile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compress.bench.backends import (
    TORCH_DTYPES,
    Backend,
    BackendOptions,
    BackendUnavailable,
    Runner,
)
from compress.models import load_model
from compress.registry import BACKENDS


def _torch_runner(compile_model: bool) -> Callable[[Path, BackendOptions], Runner]:
    def build(path: Path, options: BackendOptions) -> Runner:
        name = "torch-compile" if compile_model else "torch"
        if path.suffix == ".onnx":
            raise BackendUnavailable(f"{name} runs our model.pt files; use onnxruntime for .onnx")
        if options.threads:
            torch.set_num_threads(options.threads)
        dtype = TORCH_DTYPES[options.dtype]
        device = torch.device(options.device)
        model, spec, meta = load_model(path)
        height, width = meta.get("preprocess", {}).get("size", [32, 32])
        model = model.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
        forward = torch.compile(model) if compile_model else model

        def prepare(batch: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(batch).to(device=device, dtype=dtype)
            return x.contiguous(memory_format=torch.channels_last)

        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return forward(x)

        def predict(batch: np.ndarray) -> np.ndarray:
            return call(prepare(batch)).float().cpu().numpy()

        if compile_model:  # compile now, so a missing compiler is one clear error, not a trace
            try:
                predict(np.zeros((1, spec.in_channels, height, width), dtype=np.float32))
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                raise BackendUnavailable(
                    f"torch.compile failed: {type(exc).__name__} {first}"
                ) from None
        return Runner(name, options.device, prepare, call, predict)

    return build


BACKENDS.register("torch")(Backend(_torch_runner(False), runs="model", title="PyTorch eager"))
BACKENDS.register("torch-compile")(
    Backend(_torch_runner(True), runs="model", title="torch.compile")
)
