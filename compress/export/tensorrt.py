"""TensorRT engines from our ONNX files, with the tensorrt Python API (TensorRT 10).

A float ONNX becomes an FP16 engine; an INT8 Q/DQ ONNX (quantized for ``target: tensorrt``)
becomes a strongly typed engine whose precisions come from the graph itself (explicit
quantization), so TensorRT neither guesses ranges nor falls back silently. The batch dimension
gets an optimisation profile (min, opt, max). The builder's log is kept beside the engine.

Not executed on the machines this project is developed on (no NVIDIA GPU, no TensorRT wheel):
the code follows the documented API and is exercised in tests only up to the import check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.io import atomic_path

ENGINE_SUFFIXES = (".engine", ".plan")  # serialized engines, as TensorRT's tools name them
INSTALL_HINT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install 'compress[tensorrt]' "
    "(or build docker/Dockerfile.gpu, which starts from NVIDIA's TensorRT image)"
)


def import_tensorrt() -> Any:
    """The tensorrt module, or one clear error saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise CompressError(INSTALL_HINT) from None
    return tensorrt


@dataclass(frozen=True)
class EngineProfile:
    """Batch sizes the engine accepts (min..max) and is tuned for (opt)."""

    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 128


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    log_path: Path,
    *,
    int8: bool,
    input_shape: tuple[int, int, int],
    profile: EngineProfile,
    workspace_gib: float = 2.0,
) -> dict[str, Any]:
    """Serialise an engine for ``onnx_path``; returns facts for the manifest."""
    trt = import_tensorrt()
    log: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            log.append(f"[{severity.name}] {msg}")

    logger = _Logger()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if int8 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompressError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if not int8:
        config.set_flag(trt.BuilderFlag.FP16)
    name = network.get_input(0).name
    batch_profile = builder.create_optimization_profile()
    batch_profile.set_shape(
        name,
        (profile.min_batch, *input_shape),
        (profile.opt_batch, *input_shape),
        (profile.max_batch, *input_shape),
    )
    config.add_optimization_profile(batch_profile)
    serialized = builder.build_serialized_network(network, config)
    _write_log(log_path, log)
    if serialized is None:
        tail = " | ".join(line for line in log[-5:])
        raise CompressError(f"TensorRT engine build failed for {onnx_path.name}: {tail}")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return {
        "precision": "int8 (explicit Q/DQ, strongly typed)" if int8 else "fp16",
        "tensorrt_version": trt.__version__,
        "profile": [profile.min_batch, profile.opt_batch, profile.max_batch],
        "bytes": engine_path.stat().st_size,
    }


def _write_log(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
