"""Pad the channels of INT8 depthwise convolutions to a multiple of 16, exactly.

onnxruntime's integer depthwise kernel (MLAS, NHWC) is fast only on whole groups of 16 channels:
measured on a 2-core AVX-512 VNNI EPYC at batch 32, a 3x3 depthwise QLinearConv on 72 channels
took 0.106 ms and on 80 channels 0.036 ms; 88, 120 and 136 channels were 2.5-4x slower than 96,
128 and 144. MobileNetV3's widths are multiples of 8 (72, 88, 120 ...), so a third of its
depthwise layers hit the slow path. The float graph does not care (its NCHWc layout pads
internally), which is why this pass only runs on INT8 graphs for onnxruntime.

The pass widens the whole stretch of graph that carries the depthwise layer's channels: the
convolution that produces them gets zero filters (so the new channels are exactly 0), every
element-wise op, Q/DQ pair, squeeze-excitation pool and gate in between is channel-wise, and
every convolution that consumes them gets zero weights for the new input channels, so no real
output changes by a single bit. A stretch that reaches anything else (a reshape, a concat, a
graph output, a per-channel constant) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import helper, numpy_helper

CHANNEL_MULTIPLE = 16
CHANNEL_WISE_UNARY = {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu",
                      "Identity", "QuantizeLinear", "DequantizeLinear", "GlobalAveragePool",
                      "ReduceMean"}  # fmt: skip
CHANNEL_WISE_BINARY = {"Add", "Mul", "Sub", "Div"}


@dataclass
class _Region:
    """The tensors that carry one depthwise layer's channels, and the convs at its edges."""

    channels: int
    tensors: set[str] = field(default_factory=set)
    depthwise: list[Any] = field(default_factory=list)
    producers: list[Any] = field(default_factory=list)  # pad output channels
    consumers: list[Any] = field(default_factory=list)  # pad input channels


class _Graph:
    def __init__(self, model: Any) -> None:
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producers = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.initializers.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def weight_shape(self, conv: Any) -> tuple[int, ...] | None:
        weight = self.initializers.get(conv.input[1])
        dq = self.producers.get(conv.input[1])
        if weight is None and dq is not None and dq.op_type == "DequantizeLinear":
            weight = self.initializers.get(dq.input[0])
        return None if weight is None else tuple(weight.dims)

    def is_scalar_constant(self, name: str) -> bool:
        """An initializer of one element, or a DQ of one (a hardswish shift, a clip bound)."""
        node = self.producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            name = node.input[0]
        value = self.array(name)
        return value is not None and value.size == 1

    def add(self, name: str, value: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.initializers[name] = self.graph.initializer[-1]
        return name


def pad_depthwise_channels(model: Any, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Widen every depthwise conv whose channel count is not a multiple of ``multiple`` (and
    the channel-wise stretch around it) with zero channels; returns how many stretches were
    widened. Real outputs are unchanged."""
    graph = _Graph(model)
    seen: set[str] = set()
    widened = 0
    for node in list(graph.graph.node):
        shape = graph.weight_shape(node) if node.op_type == "Conv" else None
        if shape is None or not _is_depthwise(node, shape) or shape[0] % multiple == 0:
            continue
        if node.output[0] in seen:  # already walked from another depthwise conv of its stretch
            continue
        region = _region(graph, node, shape[0])
        if region is None:
            continue
        seen |= region.tensors
        _widen(graph, region, -region.channels % multiple)
        widened += 1
    if widened:
        _drop_unused_initializers(model.graph)
    return widened


def _group(conv: Any) -> int:
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def _is_depthwise(conv: Any, weight_shape: tuple[int, ...]) -> bool:
    return len(weight_shape) == 4 and _group(conv) == weight_shape[0] > 1 and weight_shape[1] == 1


def _region(graph: _Graph, start: Any, channels: int) -> _Region | None:
    """Walk from ``start`` along every tensor that carries its channels; None where the walk
    meets an op that is not channel-wise (the stretch cannot be widened exactly)."""
    region = _Region(channels)
    pending = [start.input[0], start.output[0]]
    region.depthwise.append(start)

    def conv_role(conv: Any, as_input: bool) -> str | None:
        shape = graph.weight_shape(conv)
        if shape is None:
            return None
        if _is_depthwise(conv, shape):
            return "depthwise" if shape[0] == channels else None
        width = shape[1] if as_input else shape[0]
        if _group(conv) != 1 or width != channels:
            return None
        return "consumer" if as_input else "producer"

    def channel_inputs(node: Any) -> list[str] | None:
        if node.op_type in CHANNEL_WISE_UNARY:
            if not _per_tensor(graph, node) or not _keeps_channels(graph, node):
                return None
            return [node.input[0]]
        if node.op_type in CHANNEL_WISE_BINARY:
            carried = [name for name in node.input if not graph.is_scalar_constant(name)]
            if any(name in graph.initializers for name in carried):
                return None  # a per-channel constant: would need padding of its own
            return carried
        return None

    def take_conv(conv: Any, as_input: bool) -> bool:
        """Record a conv met on the walk (a depthwise one carries the channels on); False
        where it is not one this stretch can widen."""
        role = conv_role(conv, as_input)
        bucket = {"depthwise": region.depthwise, "consumer": region.consumers,
                  "producer": region.producers}.get(role or "")  # fmt: skip
        if bucket is None:
            return False
        if all(conv is not other for other in bucket):
            bucket.append(conv)
        if role == "depthwise":
            pending.append(conv.output[0] if as_input else conv.input[0])
        return True

    while pending:
        name = pending.pop()
        if name in region.tensors:
            continue
        region.tensors.add(name)
        if name in graph.outputs:
            return None
        producer = graph.producers.get(name)
        if producer is None:
            return None  # a graph input or a constant
        if producer.op_type == "Conv":
            if not take_conv(producer, as_input=False):
                return None
        else:
            inputs = channel_inputs(producer)
            if inputs is None:
                return None
            pending += inputs
        for consumer in graph.consumers.get(name, []):
            if consumer.op_type == "Conv":
                if consumer.input[0] != name or not take_conv(consumer, as_input=True):
                    return None
                continue
            inputs = channel_inputs(consumer)
            if inputs is None:
                return None
            pending += [*inputs, consumer.output[0]]
    return region


def _per_tensor(graph: _Graph, node: Any) -> bool:
    """Activation Q/DQ must have one scale: a per-channel one would need padding too."""
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return True
    scale = graph.array(node.input[1])
    return scale is not None and scale.size == 1


def _keeps_channels(graph: _Graph, node: Any) -> bool:
    if node.op_type != "ReduceMean":
        return True
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = graph.array(node.input[1]) if len(node.input) > 1 else attrs.get("axes")
    return axes is not None and 1 not in {int(a) % 4 for a in np.ravel(axes)}


def _widen(graph: _Graph, region: _Region, pad: int) -> None:
    resized = set(region.tensors)
    for conv in region.producers:
        resized |= _pad_conv(graph, conv, axis=0, pad=pad)
    for conv in region.consumers:
        resized |= _pad_conv(graph, conv, axis=1, pad=pad)
    for conv in region.depthwise:
        resized |= _pad_conv(graph, conv, axis=0, pad=pad)
        for attr in conv.attribute:
            if attr.name == "group":
                attr.i += pad
    stale = [v for v in graph.graph.value_info if v.name in resized]
    for value in stale:  # their channel count changed; onnxruntime infers shapes again
        graph.graph.value_info.remove(value)


def _pad_conv(graph: _Graph, conv: Any, axis: int, pad: int) -> set[str]:
    """Zero weights for ``pad`` new output (axis 0) or input (axis 1) channels; new output
    channels also get a zero bias, so they are exactly 0. Returns the tensors that changed
    shape."""
    tag = f"{conv.name or conv.output[0]}_pad{axis}"
    dq = graph.producers.get(conv.input[1])
    if dq is not None and dq.op_type == "DequantizeLinear":
        _pad_quantized_weight(graph, dq, axis, pad, tag)
    else:
        conv.input[1] = graph.add(f"{tag}_w", _pad_array(graph.array(conv.input[1]), axis, pad))
    if axis != 0 or len(conv.input) < 3 or not conv.input[2]:
        return {conv.input[1]}
    bias_dq = graph.producers.get(conv.input[2])
    if bias_dq is not None and bias_dq.op_type == "DequantizeLinear":  # onnxruntime's int32 bias
        _pad_quantized_weight(graph, bias_dq, 0, pad, f"{tag}_b")
    else:
        conv.input[2] = graph.add(f"{tag}_b", _pad_array(graph.array(conv.input[2]), 0, pad))
    return {conv.input[1], conv.input[2]}


def _pad_quantized_weight(graph: _Graph, dq: Any, axis: int, pad: int, tag: str) -> None:
    """New entries hold their channel's zero point, so they dequantize to exactly 0."""
    values = graph.array(dq.input[0])
    scale = graph.array(dq.input[1])
    zero = graph.array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    per_channel = scale.size > 1
    if per_channel and next((a.i for a in dq.attribute if a.name == "axis"), 1) != 0:
        raise ValueError(f"{dq.name}: per-channel weight scales not on the output axis")
    zeros = np.zeros(scale.shape, values.dtype) if zero is None else zero.astype(values.dtype)
    new_shape = list(values.shape)
    new_shape[axis] = pad
    if axis == 0:  # new output channels: scale 1 and zero point 0 when per channel
        fill = np.zeros(new_shape, values.dtype) if per_channel else np.full(new_shape, zeros)
    else:
        per_output = zeros.reshape(-1, *[1] * (values.ndim - 1)) if per_channel else zeros
        fill = np.broadcast_to(per_output, new_shape).astype(values.dtype)
    dq.input[0] = graph.add(f"{tag}_q", np.concatenate([values, fill], axis=axis))
    if axis == 0 and per_channel:
        ones = np.ones(pad, scale.dtype)
        dq.input[1] = graph.add(f"{tag}_scale", np.concatenate([scale, ones]))
        if zero is not None:
            dq.input[2] = graph.add(
                f"{tag}_zero", np.concatenate([zero, np.zeros(pad, zero.dtype)])
            )


def _pad_array(values: np.ndarray, axis: int, pad: int) -> np.ndarray:
    widths = [(0, 0)] * values.ndim
    widths[axis] = (0, pad)
    return np.pad(values, widths)


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
