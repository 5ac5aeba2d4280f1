"""onnxruntime: an ONNX file on the CPU provider (or CUDA with onnxruntime-gpu), end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.bench.backends import Backend, BackendOptions, BackendUnavailable, Runner
from compress.export.onnx import onnx_session
from compress.registry import BACKENDS


def onnxruntime_runner(path: Path, options: BackendOptions) -> Runner:
    if options.dtype != "fp32":
        raise BackendUnavailable("onnxruntime runs the file's own precision; drop --dtype")
    provider = "CPUExecutionProvider"
    if options.device == "cuda":
        provider = "CUDAExecutionProvider"
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                "onnxruntime on cuda: this onnxruntime has no CUDAExecutionProvider "
                "(pip install onnxruntime-gpu)"
            )
    session = onnx_session(path, options.threads, provider)
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    return Runner("onnxruntime", options.device, lambda b: b, run, run)


BACKENDS.register("onnxruntime")(Backend(onnxruntime_runner, runs="onnx", title="onnxruntime"))
