"""torch, torch-compile, torch-cudagraph: our model.pt in PyTorch, eager, through torch.compile,
or replayed from a CUDA graph captured per batch shape."""

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


class CudaGraphs:
    """The model's forward captured once per input shape as a CUDA graph, then replayed.

    A replay launches the whole network as one unit instead of one kernel launch per layer from
    Python: the host-side launch cost, and the jitter it adds to small batches, goes away. A
    graph reads its input from a fixed buffer and writes a fixed output, so ``call`` copies the
    batch in (a device-to-device copy, timed: a caller has to do it too) and returns that output,
    overwritten by the next replay."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], warmup: int = 3) -> None:
        self.model = model
        self.warmup = warmup
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]]
        self.graphs = {}

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # cuDNN picks its kernels outside the capture
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # the capture starts outside inference mode (``model`` enters it for the forward): a
        # first capture begun inside it leaves the CUDA generator's state as inference tensors,
        # which a later capture outside it cannot update (pytorch/pytorch#166792)
        with torch.cuda.graph(graph):
            static_out = self.model(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out


def _cudagraph_runner(path: Path, options: BackendOptions) -> Runner:
    eager = _torch_runner(False)(path, options)
    replay = CudaGraphs(eager.call)

    def predict(batch: np.ndarray) -> np.ndarray:
        return replay(eager.prepare(batch)).float().cpu().numpy()

    return Runner("torch-cudagraph", options.device, eager.prepare, replay, predict)


BACKENDS.register("torch")(Backend(_torch_runner(False), runs="model", title="PyTorch eager"))
BACKENDS.register("torch-compile")(
    Backend(_torch_runner(True), runs="model", title="torch.compile")
)
BACKENDS.register("torch-cudagraph")(
    Backend(_cudagraph_runner, runs="model", title="PyTorch eager, CUDA graphs", devices=("cuda",))
)
