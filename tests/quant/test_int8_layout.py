"""The INT8 graph passes that only change speed: depthwise channels padded to whole groups of
16 and the classifier's pool kept channels-last. Neither may change a single output."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.export import qdq
from compress.export.channel_pad import pad_depthwise_channels
from compress.export.kernels import optimized_graph
from compress.export.onnx import onnx_session
from tests.quant.test_quant import SHAPE


def run(path, x: np.ndarray) -> np.ndarray:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def depthwise_widths(model: onnx.ModelProto | Path) -> list[int]:
    graph = (model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))).graph
    return [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute
            if a.name == "group" and a.i > 1]  # fmt: skip


def test_depthwise_channels_become_whole_16s_without_changing_one_output(mnv3_int8):
    plain, fast = mnv3_int8.plain, mnv3_int8.fast
    assert {72, 88, 120} <= set(depthwise_widths(plain))  # MobileNetV3's multiples of 8
    assert all(width % 16 == 0 for width in depthwise_widths(fast)), depthwise_widths(fast)
    x = np.random.default_rng(0).standard_normal((16, *SHAPE)).astype(np.float32)
    np.testing.assert_array_equal(run(fast, x), run(plain, x))  # zero channels: bit-exact


def test_the_classifier_pool_stays_channels_last(mnv3_int8):
    plain, fast = mnv3_int8.plain, mnv3_int8.fast

    def last_pool_layout(path) -> int:
        pools = [n for n in _layout_graph(path).node if n.op_type == "QLinearGlobalAveragePool"]
        return next(a.i for a in pools[-1].attribute if a.name == "channels_last")

    assert last_pool_layout(plain) == 0  # onnxruntime transposed back to NCHW before it
    assert last_pool_layout(fast) == 1


def _layout_graph(path: Path) -> onnx.GraphProto:
    """The graph after onnxruntime's layout rewrites (where channels-last is decided)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def _qdq_chain(pre_zero: int, post_zero: int) -> onnx.ModelProto:
    """x -> Q/DQ -> 1x1 conv (uint8 weights, per-tensor zero point ``pre_zero``) -> Q/DQ ->
    depthwise 3x3 on 24 channels (int8 per channel) -> Q/DQ -> 1x1 conv (uint8, zero point
    ``post_zero``) -> y: the weight layouts of onnxruntime's own quantizer, not ours."""
    rng = np.random.default_rng(0)
    tensors = {
        "s": np.array(0.05, np.float32), "z": np.array(128, np.uint8),
        "w1": rng.integers(0, 255, (24, 3, 1, 1)).astype(np.uint8),
        "w1s": np.array(0.01, np.float32), "w1z": np.array(pre_zero, np.uint8),
        "b1": rng.standard_normal(24).astype(np.float32),
        "w2": rng.integers(-100, 100, (24, 1, 3, 3)).astype(np.int8),
        "w2s": rng.uniform(0.005, 0.02, 24).astype(np.float32), "w2z": np.zeros(24, np.int8),
        "w3": rng.integers(0, 255, (8, 24, 1, 1)).astype(np.uint8),
        "w3s": np.array(0.01, np.float32), "w3z": np.array(post_zero, np.uint8),
    }  # fmt: skip
    n = helper.make_node

    def requantized(src: str, dst: str) -> list[onnx.NodeProto]:
        return [n("QuantizeLinear", [src, "s", "z"], [f"{dst}_q"]),
                n("DequantizeLinear", [f"{dst}_q", "s", "z"], [dst])]  # fmt: skip

    nodes = [
        *requantized("x", "xd"),
        n("DequantizeLinear", ["w1", "w1s", "w1z"], ["w1d"]),
        n("Conv", ["xd", "w1d", "b1"], ["c1"]),
        *requantized("c1", "c1d"),
        n("Relu", ["c1d"], ["r1"]),
        *requantized("r1", "r1d"),
        n("DequantizeLinear", ["w2", "w2s", "w2z"], ["w2d"], axis=0),
        n("Conv", ["r1d", "w2d"], ["c2"], group=24, pads=[1, 1, 1, 1]),
        *requantized("c2", "c2d"),
        n("DequantizeLinear", ["w3", "w3s", "w3z"], ["w3d"]),
        n("Conv", ["c2d", "w3d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("zeros", [(0, 0), (17, 200)])
def test_padding_keeps_outputs_exact_with_zero_point_weights(tmp_path, zeros):
    model = _qdq_chain(*zeros)
    before = tmp_path / "before.onnx"
    onnx.save(model, before)
    assert pad_depthwise_channels(model) == 1
    onnx.checker.check_model(model)
    after = tmp_path / "after.onnx"
    onnx.save(model, after)
    assert depthwise_widths(after) == [32]
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(after, x), run(before, x))


def test_a_stretch_that_reaches_a_reshape_is_left_alone():
    model = _qdq_chain(0, 0)
    graph = model.graph
    last = graph.node[-1]  # the 1x1 conv after the depthwise: replace it by a Flatten
    graph.node.remove(last)
    graph.node.append(helper.make_node("Flatten", ["c2d"], ["y"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 864]))
    assert pad_depthwise_channels(model) == 0
    assert depthwise_widths(model) == [24]


def test_runtime_graph_of_the_fast_file_is_all_integer(mnv3_int8):
    fast = mnv3_int8.fast
    ops = {n.op_type for n in optimized_graph(fast).node}
    assert not {"Conv", "Mul", "Add", "HardSigmoid", "ReduceMean"} & ops, ops


def _conv_on(size: int, stride: int) -> onnx.ModelProto:
    """x [2, 8, size, size] -> Q/DQ -> 3x3 conv, pad 1 (int8 per-channel weights, a bias)."""
    rng = np.random.default_rng(2)
    tensors = {
        "s": np.array(0.05, np.float32), "z": np.array(128, np.uint8),
        "w": rng.integers(-100, 100, (16, 8, 3, 3)).astype(np.int8),
        "ws": rng.uniform(0.005, 0.02, 16).astype(np.float32), "wz": np.zeros(16, np.int8),
        "b": rng.standard_normal(16).astype(np.float32),
    }  # fmt: skip
    n = helper.make_node
    nodes = [
        n("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        n("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        n("Conv", ["xd", "wd", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          strides=[stride, stride]),
    ]  # fmt: skip
    out = (size + 2 - 3) // stride + 1
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, out, out])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("stride", [1, 2])
def test_a_conv_on_a_1x1_input_keeps_only_its_centre_tap(tmp_path, stride):
    model = _conv_on(1, stride)
    before = tmp_path / "before.onnx"
    onnx.save(model, before)
    assert qdq.centre_taps_on_1x1_inputs(model) == 1
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs == {"kernel_shape": [1, 1]}
    after = tmp_path / "after.onnx"
    onnx.save(model, after)
    x = np.random.default_rng(3).standard_normal((2, 8, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(run(after, x), run(before, x))


def test_a_conv_on_a_larger_input_is_left_alone():
    model = _conv_on(2, 1)  # every output reads a different set of real taps
    assert qdq.centre_taps_on_1x1_inputs(model) == 0
