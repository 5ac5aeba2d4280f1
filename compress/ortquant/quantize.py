"""Static INT8 of a foreign ONNX classifier with ``onnxruntime.quantization.quantize_static``, in
the configuration our own INT8 work found fast on CPU (README, "INT8"):

- QDQ format with **uint8 activations** (asymmetric, per tensor) and **int8 weights**
  (symmetric, per output channel): the pairs onnxruntime's QDQ fusion turns into
  ``QLinearConv``/``QLinearAdd``/``QGemm``. With int8 activations (its S8S8 default) residual
  adds and the convs beside them stay float.
- ``reduce_range`` (7-bit weights) on x86 CPUs without VNNI, where u8 x s8 pair sums can saturate
  int16; ``auto`` turns it on exactly there.
- Biases become int32 at ``s_input * s_weight`` (the quantizer's default ``QuantizeBias``): the
  form onnxruntime needs to fuse a Gemm into ``QGemm`` (what compress/export/qdq.py adds to our
  own exports).
- A global average pool written as ``ReduceMean`` over H and W (the dynamo exporter's form),
  which the quantizer leaves float, becomes ``GlobalAveragePool`` between its DQ and Q, so
  onnxruntime runs it as ``QLinearGlobalAveragePool``.
- ``quant_pre_process`` first (symbolic shape inference, graph optimisation: BatchNorm folded
  into convs), falling back to the file as it is when it fails on an unusual graph.

Calibration images come from a TRAIN split; activation ranges are min/max over them.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from compress.bench.standalone import describe_artifact
from compress.errors import CompressError
from compress.export.channel_pad import pad_depthwise_channels
from compress.export.onnx import read_metadata
from compress.export.qdq import (
    centre_taps_on_1x1_inputs,
    channels_last_pooled_features,
    global_average_pools,
)
from compress.io import atomic_path, sha256_file
from compress.ortquant.images import (
    ImageSet,
    dataset_defaults,
    dataset_images,
    folder_images,
    resolve_preprocess,
)
from compress.ortquant.measure import measure
from compress.ui import console, progress

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class QuantizeRequest:
    """Everything ``compress quantize`` can be asked; the defaults are the command's."""

    source: Path
    out: Path
    dataset: str | None = None
    images: Path | None = None
    data_root: Path | None = None
    calibration_images: int = 1024
    per_channel: bool = True
    reduce_range: Literal["auto", "on", "off"] = "auto"
    mean: list[float] | None = None
    std: list[float] | None = None
    image_size: int | None = None
    limit: int | None = None  # test images measured; default: the whole test split
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int | None = None
    rounds: int = 10
    overwrite: bool = False


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: list[Any]  # [batch, C, H, W]; symbolic dimensions as strings
    outputs: int | None  # classes, when the graph says
    metadata: dict[str, Any]

    @property
    def fixed_batch(self) -> int | None:
        return self.shape[0] if isinstance(self.shape[0], int) else None


def quantize_and_measure(request: QuantizeRequest) -> dict[str, Any]:
    """Quantize ``request.source`` into ``request.out``, then measure both files side by side."""
    model_input = check_request(request)
    images = load_images(request, model_input)
    settings = quantize_file(request, model_input, images)
    console.print(f"[green]✓[/] wrote {request.out}")
    return {"source": str(request.source), "output": str(request.out),
            "input": {"name": model_input.name, "shape": model_input.shape},
            "settings": settings, "preprocess": images.preprocess,
            **measure(request, model_input, images)}  # fmt: skip


def check_request(request: QuantizeRequest) -> ModelInput:
    """Every check that can fail before any work, so a mistake costs nothing and writes nothing."""
    if (request.dataset is None) == (request.images is None):
        raise CompressError("give the calibration images: --dataset NAME or --images DIR")
    if request.out.resolve() == request.source.resolve():
        raise CompressError(f"--out {request.out} is the input file; choose another path")
    if request.out.exists() and not request.overwrite:
        raise CompressError(f"{request.out} exists; pass --overwrite to replace it")
    if request.out.suffix != ".onnx":
        raise CompressError(f"--out {request.out}: the INT8 file's name must end in .onnx")
    if request.calibration_images < 1 or not request.batch_sizes or min(request.batch_sizes) < 1:
        raise CompressError("--calibration-images and --batch-sizes must be positive")
    return read_input(request.source)


def read_input(path: Path) -> ModelInput:
    """The one float image input [batch, C, H, W] and the class count of an ONNX classifier."""
    import onnx

    if not path.is_file():
        raise CompressError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CompressError(f"{path} is not an ONNX file ({type(exc).__name__})") from None
    if not proto.graph.node:
        raise CompressError(f"{path} is not an ONNX model (its graph has no nodes)")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CompressError(
            f"{path} has {len(inputs)} inputs ({', '.join(inputs)}); a classifier with one "
            "image input [batch, C, H, W] is expected"
        )
    info = describe_artifact(path)  # float32, rank 4, loads in onnxruntime
    if any(not isinstance(d, int) for d in info["shape"][1:2]):
        raise CompressError(f"{path}: input shape {info['shape']} must have a fixed channel count")
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2:
        raise CompressError(
            f"{path}: output '{proto.graph.output[0].name}' has rank {len(dims)}; a classifier "
            "gives [batch, classes]"
        )
    outputs = dims[1].dim_value or None
    return ModelInput(info["input_name"], info["shape"], outputs, read_metadata(path))


def load_images(request: QuantizeRequest, model_input: ModelInput) -> ImageSet:
    stored = model_input.metadata.get("preprocess")
    stored = stored if isinstance(stored, dict) else None
    labels = model_input.metadata.get("labels")
    labels = labels if isinstance(labels, list) else None
    defaults = dataset_defaults(request.dataset) if request.dataset else None
    pre = resolve_preprocess(model_input.shape, stored, request.mean, request.std,
                             request.image_size, defaults)  # fmt: skip
    if request.dataset:
        images = dataset_images(request.dataset, request.data_root, pre,
                                request.calibration_images, request.limit)  # fmt: skip
    else:
        assert request.images is not None
        images = folder_images(request.images, pre, request.calibration_images, request.limit,
                               labels)  # fmt: skip
    outputs = model_input.outputs
    if images.labelled and images.classes and outputs and len(images.classes) > outputs:
        raise CompressError(
            f"the model has {outputs} outputs but {images.description} has "
            f"{len(images.classes)} classes"
        )
    if labels and not images.classes:
        images.classes = labels
    return images


def reduce_range_setting(choice: str) -> tuple[bool, str]:
    """(reduce_range, why): ``auto`` is on for x86 CPUs without VNNI."""
    if choice != "auto":
        return choice == "on", f"--reduce-range {choice}"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False, f"auto: {machine} (not x86): no int16 saturation to avoid"
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    vnni = [f for f in VNNI_FLAGS if f in flags]
    if vnni:
        return False, f"auto: this CPU has {vnni[0]} (8-bit weights are exact)"
    return True, "auto: this x86 CPU has no VNNI (7-bit weights keep AVX2 exact)"


class _Reader(CalibrationDataReader):
    """Feeds calibration batches under the graph's own input name, advancing a progress bar."""

    def __init__(self, name: str, batches: Iterator[np.ndarray], advance: Any) -> None:
        self.name, self.batches, self.advance = name, batches, advance

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.advance(len(batch))
        return {self.name: batch.astype(np.float32, copy=False)}


def _fixed(batches: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Batches of exactly ``size`` for a fixed-batch graph: the last one topped up by repeats."""
    for batch in batches:
        if len(batch) < size:
            batch = np.resize(batch, (size, *batch.shape[1:]))
        yield batch


def quantize_file(
    request: QuantizeRequest, model_input: ModelInput, images: ImageSet
) -> dict[str, Any]:
    """Write the INT8 file atomically (metadata included); returns the settings used."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reduce_range, why = reduce_range_setting(request.reduce_range)
    batch = model_input.fixed_batch or CALIBRATION_BATCH
    with tempfile.TemporaryDirectory(prefix="compress-quantize-") as tmp:
        prepared, pre_process = _pre_process(request.source, Path(tmp) / "prepared.onnx")
        quantized = Path(tmp) / "int8.onnx"
        with progress() as bars, _quiet_quantizer():
            task = bars.add_task("calibrate", total=images.calibration_count, stats="")
            batches = images.calibration(batch)
            reader = _Reader(
                model_input.name,
                _fixed(batches, batch) if model_input.fixed_batch else batches,
                lambda n: bars.advance(task, min(n, images.calibration_count)),
            )
            try:
                quantize_static(
                    str(prepared), str(quantized), reader,
                    quant_format=QuantFormat.QDQ, per_channel=request.per_channel,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                )  # fmt: skip
                # not CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMax drops each full
                # chunk unmerged (ranges from the last partial chunk only, or "No data")
            except CompressError:
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                raise CompressError(
                    f"onnxruntime could not quantize {request.source}: {type(exc).__name__} {first}"
                ) from None
        proto = onnx.load(str(quantized))
        float_outputs = keep_outputs_float(proto)
        pools = global_average_pools(proto)  # onnxruntime leaves ReduceMean float
        padded = pad_depthwise_channels(proto)
        channels_last_pooled_features(proto)
        centre_taps = centre_taps_on_1x1_inputs(proto)
        settings = {
            "target": "onnxruntime",
            "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
            "format": "QDQ",
            "activations": "uint8 (asymmetric, per tensor)",
            "weights": f"int8 (symmetric, per {'channel' if request.per_channel else 'tensor'})",
            "per_channel": request.per_channel,
            "reduce_range": reduce_range,
            "reduce_range_reason": why,
            "calibrate_method": "MinMax",
            "calibration_images": images.calibration_count,
            "calibration_data": images.description,
            "pre_process": pre_process,
            "float_outputs": float_outputs,
            "reduce_mean_to_global_average_pool": pools,
            "depthwise_channels_padded_to_16": padded,
            "convs_on_1x1_inputs_reduced_to_their_centre_tap": centre_taps,
        }
        _write_metadata(proto, model_input.metadata, images, settings, request.source)
        onnx.checker.check_model(proto)
        with atomic_path(request.out) as tmp_out:
            onnx.save_model(proto, str(tmp_out))
    return settings


def keep_outputs_float(proto: Any) -> list[str]:
    """Drop the QuantizeLinear -> DequantizeLinear pair the quantizer puts on graph outputs; the
    names of the outputs it freed.

    Rounding the logits to 8 bits helps no kernel (onnxruntime's QGemm/QLinearConv write float
    output as readily) and costs accuracy: extreme logits of some calibration images set the step
    for all of them (measured on a torchvision ResNet-18, benchmarks/onnx_quantize.py: a step of
    2.9 on logits whose median top-2 margin is 1.6 took FP32 71.92% to 65.07%; with float
    logits, 71.80%).
    """
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    freed = []
    for output in graph.output:
        dq = producers.get(output.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0]) != 1:
            continue
        source = producers.get(q.input[0])
        if source is None or consumers.get(q.input[0]) != 1:
            continue  # a graph input, or a tensor other nodes read too
        source.output[list(source.output).index(q.input[0])] = output.name
        graph.node.remove(q)
        graph.node.remove(dq)
        freed.append(output.name)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:  # their scales
        graph.initializer.remove(tensor)
    return freed


def _pre_process(source: Path, target: Path) -> tuple[Path, str]:
    """onnxruntime's quant_pre_process; an unusual graph it cannot handle is quantized as is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_quantizer():
            quant_pre_process(str(source), str(target))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        console.print(
            f"  [yellow]quant_pre_process failed[/] ({type(exc).__name__} {first}); "
            "quantizing the file as it is"
        )
        return source, f"failed: {type(exc).__name__} {first}".strip()
    return target, "done (symbolic shape inference + optimisation)"


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice and progress at WARNING/INFO on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _write_metadata(
    proto: Any,
    stored: dict[str, Any],
    images: ImageSet,
    settings: dict[str, Any],
    source: Path,
) -> None:
    """The source's metadata, plus what our own INT8 exports carry: preprocess, labels,
    quantization; and where it came from."""
    import json

    values: dict[str, Any] = dict(stored)
    values["preprocess"] = images.preprocess
    if images.classes:
        values["labels"] = images.classes
    values["quantization"] = {k: settings[k] for k in ("target", "reduce_range", "per_channel",
                                                       "calibration_images", "tool")}  # fmt: skip
    values["source_stage"] = "quantize"
    values["source_file"] = source.name
    values["source_sha256"] = sha256_file(source)
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
