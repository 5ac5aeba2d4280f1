"""Touch-ups to an INT8 Q/DQ graph so that onnxruntime runs every layer on integer kernels.

onnxruntime fuses DequantizeLinear -> Gemm into QGemm only when every input of the Gemm comes
through a DequantizeLinear, the bias included, as int32 at scale ``s_input * s_weight`` (zero
point 0) - the form its own quantizer writes. The exporter leaves a float bias, so a trained
classifier (non-zero bias) stayed a float Gemm. Quantizing that bias here is exact to
``s_input * s_weight / 2`` per logit, far below the activation rounding before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress.export.channel_pad import pad_depthwise_channels

INT32_MAX = 2**31 - 1


def quantize_gemm_biases(model: Any) -> int:
    """Give every Gemm with DQ inputs and a float initializer bias an int32 DQ bias; returns
    how many were rewritten. Gemms whose bias would overflow int32 are left as they are."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rewritten = 0
    for position, node in enumerate(list(graph.node)):
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if not _is_dq(dq_x) or not _is_dq(dq_w):
            continue
        x_scale = _constant(initializers, dq_x.input[1])
        w_scale = _constant(initializers, dq_w.input[1])
        bias = numpy_helper.to_array(initializers[node.input[2]])
        if x_scale is None or w_scale is None or x_scale.size != 1 or bias.ndim != 1:
            continue
        if w_scale.size != 1 and not (
            w_scale.shape == bias.shape and _weight_axis_is_n(node, dq_w)
        ):
            continue
        scale = (x_scale.reshape(()) * w_scale).astype(np.float32)
        q = np.round(bias.astype(np.float64) / scale.astype(np.float64))
        if np.abs(q).max(initial=0) > INT32_MAX:
            continue
        name = f"{node.name or node.output[0]}_bias"
        graph.initializer.extend([numpy_helper.from_array(q.astype(np.int32), f"{name}_int32"),
                                  numpy_helper.from_array(scale, f"{name}_scale")])  # fmt: skip
        attrs = {"axis": 0} if scale.ndim == 1 else {}
        dq = helper.make_node("DequantizeLinear", [f"{name}_int32", f"{name}_scale"],
                              [f"{name}_dq"], name=f"{name}_dq", **attrs)  # fmt: skip
        graph.node.insert(position + rewritten, dq)  # before the Gemm: stays topologically sorted
        float_bias, node.input[2] = node.input[2], f"{name}_dq"
        if not any(float_bias in n.input for n in graph.node):  # else onnxruntime warns of it
            graph.initializer.remove(initializers[float_bias])
        rewritten += 1
    return rewritten


def _is_dq(node: Any) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _is_q_or_dq(node: Any) -> bool:
    return node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear")


def _constant(initializers: dict[str, Any], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(initializers[name]) if name in initializers else None


def _weight_axis_is_n(gemm: Any, dq_w: Any) -> bool:
    """Per-channel weight scales must run along the Gemm's output features."""
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
    return axis == (0 if trans_b else 1)


def int8_graph_passes(quant: dict[str, Any] | None) -> tuple[Any, ...]:
    """The passes an export of a model quantized with ``quant`` needs: int32 biases for
    onnxruntime's QGemm, integer hard activations and pools, depthwise channels in whole
    groups of 16, no multiplies with padding; none for TensorRT (it takes float biases) or a
    float model."""
    if quant is None or quant.get("target") == "tensorrt":
        return ()
    return (quantize_gemm_biases, integer_hard_activations, global_average_pools,
            pad_depthwise_channels, channels_last_pooled_features,
            centre_taps_on_1x1_inputs)  # fmt: skip


def integer_hard_activations(model: Any) -> int:
    """Rewrite each DQ -> HardSwish|HardSigmoid -> Q island into ops onnxruntime runs on uint8;
    returns how many were rewritten.

    onnxruntime has no integer HardSigmoid, so MobileNetV3's 19 hardswish and 9 SE gates ran as
    float between casts and ate what the integer convolutions saved. With ``hardsigmoid(x) =
    alpha * clip(x + beta/alpha, 0, 1/alpha)`` the clip is a QuantizeLinear's saturation and the
    factor ``alpha`` moves into the next scale, so the island becomes QLinearAdd (+ QLinearMul
    for hardswish): ``c = Q(x + beta/alpha)`` on ``[0, 1/alpha]`` at zero point 0, then
    hardsigmoid ``= Q(c)`` at scale ``s_y / alpha`` and hardswish ``= Q(x * c)`` at the same.
    Hardswish adds one uint8 rounding of ``c`` (step <= 6/255, error <= |x|/510 per element).
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten = 0
    for node in list(graph.node):
        if node.op_type not in ("HardSwish", "HardSigmoid"):
            continue
        dq, users = producers.get(node.input[0]), consumers.get(node.output[0], [])
        if not _is_dq(dq) or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        x_scale, x_zero = _constant(initializers, dq.input[1]), _dq_zero(initializers, dq)
        y_scale = _constant(initializers, q.input[1])
        y_zero = _constant(initializers, q.input[2]) if len(q.input) > 2 else None
        if x_scale is None or y_scale is None or x_scale.size != 1 or y_scale.size != 1:
            continue
        if x_zero is None or y_zero is None or y_zero.dtype != np.uint8:
            continue
        alpha, beta = (1 / 6, 0.5) if node.op_type == "HardSwish" else _hard_sigmoid_args(node)
        if node.op_type == "HardSigmoid" and y_zero.reshape(()) != 0:
            continue  # the saturation at 0 is the clip only at zero point 0
        name = node.name or node.output[0]
        shift = np.float32(beta / alpha)
        x_max = float(x_scale.reshape(())) * (float(np.iinfo(x_zero.dtype).max) - float(x_zero))
        c_max = float(np.clip(x_max + shift, 1e-6, 1 / alpha))
        constants = {  # the shift as uint8 255 at scale shift/255: exact
            "shift_q": np.array(255, np.uint8),
            "shift_scale": np.array(shift / 255, np.float32),
            "zero": np.array(0, np.uint8),
            "y_scale": (y_scale / np.float32(alpha)).astype(np.float32),
        }
        if node.op_type == "HardSwish":
            constants["c_scale"] = np.array(c_max / 255, np.float32)
        graph.initializer.extend(
            numpy_helper.from_array(v, f"{name}_{k}") for k, v in constants.items()
        )

        own = f"{name}_{{}}".format  # this island's tensor and node names
        zero = own("zero")
        shift_inputs = [own("shift_q"), own("shift_scale"), zero]
        nodes = [_node("DequantizeLinear", shift_inputs, own("shift")),
                 _node("Add", [node.input[0], own("shift")], own("c"))]  # fmt: skip
        if node.op_type == "HardSwish":
            nodes += [
                _node("QuantizeLinear", [own("c"), own("c_scale"), zero], own("c_q")),
                _node("DequantizeLinear", [own("c_q"), own("c_scale"), zero], own("c_dq")),
                # its own DQ of x: each integer op reads DQ outputs of its own (QDQ node units)
                _node("DequantizeLinear", list(dq.input), own("x"), **_attrs(dq)),
                _node("Mul", [own("x"), own("c_dq")], own("xc")),
            ]
        q.input[0] = own("xc" if node.op_type == "HardSwish" else "c")
        q.input[1] = own("y_scale")
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new_node in enumerate(nodes):
            graph.node.insert(position + offset, new_node)
        rewritten += 1
    return rewritten


def global_average_pools(model: Any) -> int:
    """ReduceMean over H and W with keepdims -> GlobalAveragePool (same values), which
    onnxruntime fuses with its DQ/Q into an integer QLinearGlobalAveragePool; ReduceMean has no
    integer kernel. Returns how many were rewritten."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "ReduceMean" or not _is_dq(producers.get(node.input[0])):
            continue
        attrs = {a.name: a.i for a in node.attribute}
        axes = _constant(initializers, node.input[1]) if len(node.input) > 1 else None
        if (
            attrs.get("keepdims", 1) != 1
            or axes is None
            or sorted(axes.tolist())
            not in (
                [2, 3],
                [-2, -1],
            )
        ):
            continue
        if not _rank_is_4(graph, node.input[0], producers):
            continue
        node.op_type = "GlobalAveragePool"
        axes_name = node.input[1]
        del node.input[1:]
        if not any(axes_name in n.input for n in graph.node):
            graph.initializer.remove(initializers[axes_name])
        del node.attribute[:]
        rewritten += 1
    return rewritten


def channels_last_pooled_features(model: Any) -> int:
    """Put a Transpose to NHWC between the classifier's global pool and the Reshape/Flatten
    after it (a no-op on [N, C, 1, 1]); returns how many were inserted.

    onnxruntime runs the integer network channels-last and transposes back to NCHW where a
    layout-sensitive op such as Reshape needs it. Before the classifier it did so ahead of the
    last pool, whose NCHW kernel on [32, 576, 2, 2] then took 0.10 ms against 0.01 ms
    channels-last (MobileNetV3-Small, 2-core EPYC). With this Transpose in the file the two
    cancel and the pool stays channels-last."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inserted = 0
    for node in list(graph.node):
        if node.op_type not in ("Reshape", "Flatten") or not _is_dq(producers.get(node.input[0])):
            continue
        source = node.input[0]
        while _is_q_or_dq(producers.get(source)):
            source = producers[source].input[0]
        pool = producers.get(source)
        if pool is None or pool.op_type != "GlobalAveragePool" or not _flattens_to_2d(node, graph):
            continue
        name = f"{node.input[0]}_nhwc"
        transpose = _node("Transpose", [node.input[0]], name, perm=[0, 2, 3, 1])
        graph.node.insert(list(graph.node).index(node), transpose)
        node.input[0] = name
        inserted += 1
    return inserted


def _flattens_to_2d(node: Any, graph: Any) -> bool:
    """A Flatten at axis 1, or a Reshape to [N, C] (first dim N, 0 or -1)."""
    if node.op_type == "Flatten":
        return next((a.i for a in node.attribute if a.name == "axis"), 1) == 1
    initializers = {t.name: t for t in graph.initializer}
    shape = _constant(initializers, node.input[1])
    return shape is not None and shape.size == 2


def centre_taps_on_1x1_inputs(model: Any) -> int:
    """A k x k conv on a 1 x 1 input (a ResNet's last stage at 28 px) reads one kernel tap;
    every other tap lands on zero padding. Slice the weights to that tap and make the conv
    1 x 1 (same numbers); returns how many were rewritten.

    onnxruntime's float kernel skips padding taps by itself, its integer im2col multiplies
    them: the three 3x3 convs of ResNet-18's last stage at 28 px, batch 32, took 3.5 ms as
    QLinearConv against 0.83 ms in FP32 (2-core EPYC)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    spatial = _spatial_sizes(model)
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Conv" or spatial.get(node.input[0]) != (1, 1):
            continue
        dq = producers.get(node.input[1])
        weight_name = dq.input[0] if _is_dq(dq) else node.input[1]
        weight = _constant(initializers, weight_name)
        attrs = _attrs(node)
        if weight is None or weight.ndim != 4 or weight.shape[2:] == (1, 1):
            continue
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            continue
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
        (kh, kw), (sh, sw) = weight.shape[2:], attrs.get("strides", [1, 1])
        if not (
            top < kh and left < kw and 1 + top + bottom - kh < sh and 1 + left + right - kw < sw
        ):
            continue  # the output is not 1 x 1, or the centre is not a real tap
        tap = np.ascontiguousarray(weight[:, :, top : top + 1, left : left + 1])
        name = f"{weight_name}_tap"
        graph.initializer.append(numpy_helper.from_array(tap, name))
        if _is_dq(dq):
            dq.input[0] = name
        else:
            node.input[1] = name
        for value in [v for v in graph.value_info if v.name == node.input[1]]:
            graph.value_info.remove(value)  # the weight's old k x k shape
        if not any(weight_name in n.input for n in graph.node):
            graph.initializer.remove(initializers[weight_name])
        for attr in list(node.attribute):
            if attr.name in ("pads", "strides", "kernel_shape", "dilations"):
                node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute("kernel_shape", [1, 1]))
        rewritten += 1
    return rewritten


def _spatial_sizes(model: Any) -> dict[str, tuple[int, int]]:
    """(H, W) of every rank-4 tensor whose spatial size shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot handle: no rewrite, not an error
        return {}
    sizes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            sizes[value.name] = (dims[2].dim_value, dims[3].dim_value)
    return sizes


def _rank_is_4(graph: Any, name: str, producers: dict[str, Any]) -> bool:
    """Whether tensor ``name`` is NCHW: follows Q and DQ nodes (they keep the shape) back to
    a value with a known shape."""
    shapes = {v.name: len(v.type.tensor_type.shape.dim) for v in
              list(graph.value_info) + list(graph.input) + list(graph.output)}  # fmt: skip
    while name not in shapes and _is_q_or_dq(producers.get(name)):
        name = producers[name].input[0]
    return shapes.get(name) == 4


def _dq_zero(initializers: dict[str, Any], dq: Any) -> np.ndarray | None:
    if len(dq.input) > 2:
        return _constant(initializers, dq.input[2])
    return np.array(0, np.uint8)


def _hard_sigmoid_args(node: Any) -> tuple[float, float]:
    attrs = {a.name: a.f for a in node.attribute}
    return attrs.get("alpha", 0.2), attrs.get("beta", 0.5)


def _node(op: str, inputs: list[str], output: str, **attrs: Any) -> Any:
    return helper.make_node(op, inputs, [output], output, **attrs)


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
