"""A calibrated fake-quantized MobileNetV3-Small and its INT8 ONNX files, shared by the quant
tests: the dynamo exporter takes most of a minute to trace it on 2 cores, so it traces once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import onnx
import pytest
import torch
from torch import nn

from compress.export import qdq
from compress.export.onnx import export_onnx, write_onnx
from compress.models import ModelSpec
from compress.quant.prepare import QuantSpec, calibrate, freeze_for_export, quantize_model
from tests.quant.test_quant import SHAPE, trained_bn

# the passes an INT8 file needs to run integer kernels, without those that only change speed
WITHOUT_SPEED_PASSES = (qdq.quantize_gemm_biases, qdq.integer_hard_activations,
                        qdq.global_average_pools)  # fmt: skip


class Mnv3Int8(NamedTuple):
    quantized: nn.Module
    plain: Path  # WITHOUT_SPEED_PASSES only
    fast: Path  # every pass an onnxruntime INT8 export gets


def with_passes(traced: Path, passes: Sequence[Callable[[Any], Any]], path: Path) -> Path:
    """``traced`` with ``passes`` applied, written as export_onnx writes (write_onnx)."""
    write_onnx(onnx.load(str(traced)), path, passes)
    return path


@pytest.fixture(scope="session")
def mnv3_int8(tmp_path_factory: pytest.TempPathFactory) -> Mnv3Int8:
    """Traced once, then written with and without the speed-only graph passes."""
    model = trained_bn(ModelSpec("torchvision:mobilenet_v3_small", 10, 1, stem="cifar"))
    quantized = quantize_model(model, QuantSpec())
    torch.manual_seed(1)
    calibrate(quantized, (torch.randn(32, *SHAPE) for _ in range(4)), torch.device("cpu"))
    folder = tmp_path_factory.mktemp("mnv3")
    traced = folder / "traced.onnx"
    export_onnx(freeze_for_export(quantized), traced, input_shape=SHAPE, opset=18,
                dynamic_batch=True, metadata={})  # fmt: skip
    fast_passes = qdq.int8_graph_passes({"target": "onnxruntime"})
    return Mnv3Int8(
        quantized,
        with_passes(traced, WITHOUT_SPEED_PASSES, folder / "plain.onnx"),
        with_passes(traced, fast_passes, folder / "fast.onnx"),
    )
