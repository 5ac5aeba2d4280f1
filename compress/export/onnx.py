"""ONNX export with self-describing metadata, and a parity check against PyTorch.

A shipped ``.onnx`` carries what a consumer needs without our code: ``preprocess`` (JSON: size,
channels, mean, std, interpolation, scale) and ``labels`` (JSON list of class names) in
metadata_props.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compress.io import atomic_path

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    input_shape: tuple[int, int, int],
    opset: int,
    dynamic_batch: bool,
    metadata: dict[str, Any],
    graph_passes: Sequence[Callable[[Any], Any]] = (),
) -> None:
    """Export ``model`` (eval mode, CPU) to ``path`` atomically and check it with onnx.checker;
    ``graph_passes`` edit the ONNX model in place before the check (see compress.export.qdq)."""
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    example = (torch.randn(2, *input_shape),)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = "compress"
    write_onnx(proto, path, graph_passes)


def write_onnx(
    proto: onnx.ModelProto, path: Path, graph_passes: Sequence[Callable[[Any], Any]] = ()
) -> None:
    """Apply ``graph_passes`` to ``proto`` in place, check it, and write it to ``path``
    atomically: the last step of every export, also for a graph traced once and written with
    several sets of passes."""
    for graph_pass in graph_passes:
        graph_pass(proto)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter prints progress and logs recoverable tracebacks; keep the CLI clean."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 10)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def read_metadata(path: Path) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded."""
    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def onnx_session(
    path: Path, threads: int | None = None, provider: str = "CPUExecutionProvider"
) -> Any:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=[provider])


def onnx_logits(session: Any, batches: Any) -> np.ndarray:
    """Run ``session`` over an iterable of float tensors; stack the logits."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x.numpy()})[0] for x in batches])
