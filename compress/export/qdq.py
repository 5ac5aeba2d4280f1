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
from onnx import helper, numpy_helper

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


def _constant(initializers: dict[str, Any], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(initializers[name]) if name in initializers else None


def _weight_axis_is_n(gemm: Any, dq_w: Any) -> bool:
    """Per-channel weight scales must run along the Gemm's output features."""
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
    return axis == (0 if trans_b else 1)


def int8_graph_passes(quant: dict[str, Any] | None) -> tuple[Any, ...]:
    """The passes an export of a model quantized with ``quant`` needs: int32 biases for
    onnxruntime's QGemm; none for TensorRT (it takes float biases) or a float model."""
    if quant is None or quant.get("target") == "tensorrt":
        return ()
    return (quantize_gemm_biases,)
