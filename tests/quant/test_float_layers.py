"""`float_layers`: named conv/linear layers stay float in the fake-quantized model and in the
INT8 file, with the activation after them, and the file still agrees with the model."""

from __future__ import annotations

import onnx
import pytest
import torch

from compress.errors import CompressError
from compress.export.kernels import float_ops, optimized_graph
from compress.models import ModelSpec
from compress.quant.prepare import QuantSpec, calibrate, quantize_model
from tests.quant.test_quant import SHAPE, assert_agrees, exported, trained_bn


def test_a_float_first_layer_runs_float_with_its_hardswish_and_agrees(tmp_path):
    model = trained_bn(ModelSpec("torchvision:mobilenet_v3_small", 10, 1, stem="cifar"))
    quantized = quantize_model(model, QuantSpec(float_layers=("features.0.0",)))
    torch.manual_seed(1)
    calibrate(quantized, (torch.randn(32, *SHAPE) for _ in range(4)), torch.device("cpu"))
    path = exported(quantized, tmp_path / "float_stem.onnx")
    graph = onnx.load(str(path)).graph
    stem = next(n for n in graph.node if n.op_type == "Conv")
    assert stem.input[0] == graph.input[0].name  # reads the float input, no Q/DQ before it
    assert stem.input[1] in {t.name for t in graph.initializer}  # float weights
    assert any(n.op_type == "HardSwish" for n in graph.node)  # the stem's, left to fuse
    # what computes in float is the stem and its hardswish (HardSigmoid * x at this level;
    # the full optimisation level fuses both into one NCHWc conv); everything else is integer
    assert float_ops(optimized_graph(path)) == {"Conv": 1, "HardSigmoid": 1, "Mul": 1}
    assert_agrees(quantized, path)
    spec = QuantSpec(float_layers=("features.0.0",))
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def test_an_unknown_float_layer_is_named_with_a_suggestion():
    model = trained_bn(ModelSpec("torchvision:mobilenet_v3_small", 10, 1, stem="cifar"))
    with pytest.raises(CompressError, match=r"no conv or linear layer 'features\.0\.1'.*"
                       r"did you mean 'features\.0\.0'"):  # fmt: skip
        quantize_model(model, QuantSpec(float_layers=("features.0.1",)))
