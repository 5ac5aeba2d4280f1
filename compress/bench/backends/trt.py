"""tensorrt, tensorrt-e2e: a TensorRT engine on a CUDA device (the engine alone, or with copies)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.bench.backends import Backend, BackendOptions, BackendUnavailable, Runner
from compress.export.tensorrt import import_tensorrt
from compress.registry import BACKENDS


def _tensorrt_runner(end_to_end: bool) -> Callable[[Path, BackendOptions], Runner]:
    """TensorRT engines (``.engine``/``.plan``), timed with CUDA events.

    ``tensorrt`` times the engine alone (input already on the GPU); ``tensorrt-e2e`` adds the
    copy of a numpy batch to the GPU and of the logits back, as an application pays them.
    Written against the TensorRT 10 tensor API; not executed on our CPU-only machines.
    """

    def build(path: Path, options: BackendOptions) -> Runner:
        name = "tensorrt-e2e" if end_to_end else "tensorrt"
        trt = import_tensorrt()  # load_runner has checked for a CUDA device
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendUnavailable(f"{path.name} is not an engine this TensorRT can load")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        input_name = next(n for n in names if engine.get_tensor_mode(n) == mode)
        output_name = next(n for n in names if engine.get_tensor_mode(n) != mode)
        stream = torch.cuda.Stream()

        def execute(x: torch.Tensor) -> torch.Tensor:
            """Queue the engine on its own stream (TensorRT syncs extra on the legacy default
            one), ordered after the input's copy on torch's stream and before whatever reads
            the output there; the host does not wait, so the caller's CUDA events time it."""
            context.set_input_shape(input_name, tuple(x.shape))
            out = torch.empty(tuple(context.get_tensor_shape(output_name)), device="cuda")
            context.set_tensor_address(input_name, x.data_ptr())
            context.set_tensor_address(output_name, out.data_ptr())
            stream.wait_stream(torch.cuda.current_stream())
            if not context.execute_async_v3(stream.cuda_stream):
                raise BackendUnavailable(f"{name}: TensorRT could not run {path.name}")
            torch.cuda.current_stream().wait_stream(stream)
            return out

        def prepare(batch: np.ndarray) -> Any:
            if end_to_end:
                return batch
            return torch.from_numpy(batch).cuda().contiguous()

        def call(x: Any) -> Any:
            if end_to_end:
                return execute(torch.from_numpy(x).cuda()).cpu()
            return execute(x)

        def predict(batch: np.ndarray) -> np.ndarray:
            return execute(torch.from_numpy(batch).cuda().contiguous()).cpu().numpy()

        return Runner(name, "cuda", prepare, call, predict)

    return build


BACKENDS.register("tensorrt")(
    Backend(_tensorrt_runner(False), runs="engine", title="TensorRT", devices=("cuda",))
)
BACKENDS.register("tensorrt-e2e")(
    Backend(_tensorrt_runner(True), runs="engine", title="TensorRT, with copies", devices=("cuda",))
)
