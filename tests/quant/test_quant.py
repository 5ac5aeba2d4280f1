"""INT8: BatchNorm folding, fake quantization that matches the exported Q/DQ graph, and a graph
onnxruntime runs with integer kernels (not Q/DQ around float convs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compress.errors import CompressError
from compress.export.kernels import integer_summary, runtime_ops
from compress.export.onnx import export_onnx, onnx_session
from compress.export.qdq import int8_graph_passes
from compress.models import ModelSpec, build_model, load_model, save_model
from compress.quant.fakequant import ActQuant, QConv2d, QLinear
from compress.quant.prepare import QuantSpec, calibrate, freeze_for_export, quantize_model

SHAPE = (1, 16, 16)


def trained_bn(spec: ModelSpec) -> nn.Module:
    """A model whose BatchNorm layers hold non-trivial statistics, so folding is exercised."""
    torch.manual_seed(0)
    model = build_model(spec)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if isinstance(m, nn.Linear):  # a trained classifier's bias is not zero
            nn.init.uniform_(m.bias, -0.5, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, *SHAPE))
    return model.eval()


def calibrated(arch: str, quant: QuantSpec) -> tuple[nn.Module, nn.Module]:
    width = 0.5 if arch == "mobilenet_v2" else 1.0
    model = trained_bn(ModelSpec(arch, 10, 1, width, "compact"))
    quantized = quantize_model(model, quant)
    torch.manual_seed(1)
    calibrate(quantized, (torch.randn(32, *SHAPE) for _ in range(4)), torch.device("cpu"))
    return model, quantized


@pytest.fixture(scope="module", params=["mobilenet_v2", "resnet18"])
def int8_case(request, tmp_path_factory) -> tuple[str, nn.Module, nn.Module, Path]:
    """(arch, float model, calibrated fake-quantized model, its INT8 ONNX), exported once."""
    float_model, quantized = calibrated(request.param, QuantSpec())
    path = exported(quantized, tmp_path_factory.mktemp("int8") / "int8.onnx")
    return request.param, float_model, quantized, path


def exported(model: nn.Module, path: Path, target: str = "onnxruntime") -> Path:
    export_onnx(freeze_for_export(model), path, input_shape=SHAPE, opset=18,
                dynamic_batch=True, metadata={},
                graph_passes=int8_graph_passes({"target": target}))  # fmt: skip
    return path


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_batchnorm_folding_keeps_the_function(arch):
    model = trained_bn(ModelSpec(arch, 10, 1, 0.5 if arch == "mobilenet_v2" else 1.0, "compact"))
    quantized = quantize_model(model, QuantSpec())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in quantized.modules())
    for q in quantized.modules():  # observing = float pass-through: only the folded weights act
        if isinstance(q, ActQuant):
            q.observing = True
    for q in quantized.modules():
        if isinstance(q, QConv2d | QLinear):
            q.qmax = 2**20  # rounding far below float error
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(quantized(x), model(x), atol=1e-4, rtol=1e-4)


def test_weights_are_per_channel_symmetric_and_7_bit_with_reduce_range():
    _, quantized = calibrated("mobilenet_v2", QuantSpec(reduce_range=True))
    frozen = freeze_for_export(quantized)
    convs = [m for m in frozen.modules() if isinstance(m, QConv2d)]
    assert convs
    for conv in convs:
        q = conv.w_int8
        assert q.dtype == torch.int8 and int(q.abs().max()) == 63  # each channel's max hits 63
        scale = conv.w_scale.view(-1, 1, 1, 1)
        assert torch.allclose(q.float() * scale, conv.quantized_weight(), atol=1e-7)


def test_exported_int8_onnx_agrees_with_the_fake_quantized_model(int8_case):
    _, _, quantized, path = int8_case
    assert_agrees(quantized, path)


def assert_agrees(quantized: nn.Module, path: Path) -> None:
    x = torch.randn(64, *SHAPE)
    with torch.no_grad():
        reference = quantized(x).numpy()
    session = onnx_session(path)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    # integer kernels round their requantization differently by a step here and there; those
    # steps compound with depth, but stay small next to the logits' range
    span = reference.max() - reference.min()
    diff = np.abs(out - reference)
    assert diff.mean() < 0.02 * span and diff.max() < 0.1 * span, diff.mean() / span
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_onnxruntime_runs_integer_kernels_for_every_conv_and_add(int8_case):
    arch, float_model, _, path = int8_case
    ops = runtime_ops(path)
    convs = sum(isinstance(m, nn.Conv2d) for m in float_model.modules())
    assert ops.get("QLinearConv") == convs, ops
    assert ops.get("Conv", 0) == ops.get("FusedConv", 0) == ops.get("Add", 0) == 0, ops
    assert ops.get("QLinearAdd", 0) > 0, ops
    if arch == "mobilenet_v2":  # the student: its classifier runs integer too
        assert ops.get("QGemm") == 1, ops
        used = {name for node in onnx.load(str(path)).graph.node for name in node.input}
        assert {t.name for t in onnx.load(str(path)).graph.initializer} <= used  # no float bias
        assert ops.get("QLinearGlobalAveragePool") == 1, ops  # its pooling too
        assert integer_summary(ops) == {"integer_ops": convs + ops["QLinearAdd"] + 2,
                                        "float_compute_ops": 0}  # fmt: skip


def test_tensorrt_target_is_symmetric_int8_throughout(tmp_path):
    _, quantized = calibrated("mobilenet_v2", QuantSpec(target="tensorrt", reduce_range=False))
    graph = onnx.load(str(exported(quantized, tmp_path / "trt.onnx", "tensorrt"))).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    zero_points = [constants[n.input[2]] for n in graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear")]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_quantized_checkpoint_reloads_exactly_also_when_pruned(tmp_path):
    from compress.prune.structured import PruneTarget, prune

    model = trained_bn(ModelSpec("mobilenet_v2", 10, 1, 0.5, "compact"))
    prune(model, torch.randn(1, *SHAPE), importance="l2", target=PruneTarget("channels", 0.3),
          global_ranking=False, steps=1, round_to=8, ignored_layers=[])  # fmt: skip
    quant = QuantSpec()
    quantized = quantize_model(model.eval(), quant)
    calibrate(quantized, (torch.randn(16, *SHAPE) for _ in range(2)), torch.device("cpu"))
    spec = ModelSpec("mobilenet_v2", 10, 1, 0.5, "compact", pruned=True, quant=quant.to_dict())
    save_model(quantized, spec, tmp_path / "q.pt", {})
    reloaded, reloaded_spec, _ = load_model(tmp_path / "q.pt")
    assert reloaded_spec.quant == quant.to_dict()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), quantized.eval()(x))
    wrong = replace(spec, quant=QuantSpec(target="tensorrt").to_dict())
    save_model(quantized, wrong, tmp_path / "wrong.pt", {})
    reloaded, _, _ = load_model(tmp_path / "wrong.pt")  # same graph, other scheme: loads
    assert not torch.equal(reloaded.eval()(x), quantized.eval()(x))


def test_calibration_must_see_data():
    model = trained_bn(ModelSpec("mobilenet_v2", 10, 1, 0.25, "compact"))
    with pytest.raises(CompressError, match="saw no data"):
        calibrate(quantize_model(model, QuantSpec()), iter([]), torch.device("cpu"))


def test_untraceable_models_get_a_clear_error():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(CompressError, match="cannot trace Branchy"):
        quantize_model(Branchy(), QuantSpec())


def test_mobilenet_v3_hardswish_se_and_pooling_run_integer(mnv3_int8):
    """The hardswish / SE-gate / ReduceMean islands that stayed float (MobileNetV3) become
    QLinearAdd/QLinearMul/QLinearGlobalAveragePool, and the file still agrees with the
    fake-quantized model."""
    quantized, path = mnv3_int8.quantized, mnv3_int8.fast
    graph = onnx.load(str(path)).graph
    assert not {"HardSwish", "HardSigmoid", "ReduceMean"} & {n.op_type for n in graph.node}
    ops = runtime_ops(path)
    assert not {"HardSigmoid", "Mul", "ReduceMean", "Conv", "Add"} & set(ops), ops
    assert ops["QLinearMul"] >= 19 + 9 and ops["QLinearGlobalAveragePool"] == 10, ops
    assert_agrees(quantized, path)
