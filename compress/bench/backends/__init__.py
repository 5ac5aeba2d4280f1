"""Inference backends by name: each loads an artifact into a ``Runner``.

A runner separates what is timed from what is not. ``prepare`` puts a batch where the model reads
it (a torch tensor in the right dtype and memory format, on the GPU for CUDA) once, outside the
timed loop; ``call`` is one inference and the only thing timed; ``predict`` gives numpy logits
for accuracy. CUDA runners are timed with CUDA events (``time_cuda_calls``).

onnxruntime on CUDA is timed end to end (``session.run`` is synchronous and includes the copies
to and from the GPU), as a user calling it from numpy would see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from compress.bench.timing import TimingPlan, time_calls, time_cuda_calls
from compress.errors import CompressError
from compress.export.tensorrt import ENGINE_SUFFIXES
from compress.registry import BACKENDS

Device = Literal["cpu", "cuda"]
Dtype = Literal["fp32", "fp16", "bf16"]
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackendUnavailable(CompressError):
    """The backend, device or dtype asked for cannot run on this machine or this artifact."""


@dataclass(frozen=True)
class BackendOptions:
    threads: int | None = None
    device: Device = "cpu"
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


# BACKENDS: name -> build(path, options) -> Runner


def load_runner(backend: str, path: Path, options: BackendOptions) -> Runner:
    if options.device == "cuda" and not torch.cuda.is_available() and backend != "onnxruntime":
        raise BackendUnavailable(f"{backend} on cuda: no CUDA device is available here")
    return BACKENDS.get(backend)(path, options)


def default_backend(path: Path) -> str:
    if path.suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    return "onnxruntime" if path.suffix == ".onnx" else "torch"


@BACKENDS.register("onnxruntime")
def onnxruntime_runner(path: Path, options: BackendOptions) -> Runner:
    import onnxruntime as ort

    from compress.export.onnx import onnx_session

    if path.suffix != ".onnx":
        raise BackendUnavailable(f"onnxruntime runs .onnx files, not {path.name}")
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


def _torch_runner(compile_model: bool) -> Callable[[Path, BackendOptions], Runner]:
    def build(path: Path, options: BackendOptions) -> Runner:
        from compress.models import load_model

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


BACKENDS.register("torch")(_torch_runner(compile_model=False))
BACKENDS.register("torch-compile")(_torch_runner(compile_model=True))


def _tensorrt_runner(end_to_end: bool) -> Callable[[Path, BackendOptions], Runner]:
    """TensorRT engines (``.engine``/``.plan``), timed with CUDA events.

    ``tensorrt`` times the engine alone (input already on the GPU); ``tensorrt-e2e`` adds the
    copy of a numpy batch to the GPU and of the logits back, as an application pays them.
    Written against the TensorRT 10 tensor API; not executed on our CPU-only machines.
    """

    def build(path: Path, options: BackendOptions) -> Runner:
        from compress.export.tensorrt import import_tensorrt

        name = "tensorrt-e2e" if end_to_end else "tensorrt"
        if path.suffix not in ENGINE_SUFFIXES:
            raise BackendUnavailable(f"{name} runs TensorRT engines (.engine), not {path.name}")
        trt = import_tensorrt()
        if options.device != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable(f"{name} needs a CUDA device (add --device cuda)")
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
            context.set_input_shape(input_name, tuple(x.shape))
            out = torch.empty(tuple(context.get_tensor_shape(output_name)), device="cuda")
            context.set_tensor_address(input_name, x.data_ptr())
            context.set_tensor_address(output_name, out.data_ptr())
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
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


BACKENDS.register("tensorrt")(_tensorrt_runner(end_to_end=False))
BACKENDS.register("tensorrt-e2e")(_tensorrt_runner(end_to_end=True))
