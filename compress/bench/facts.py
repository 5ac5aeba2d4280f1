"""Model facts: parameters, multiply-accumulates (MACs) per image, and file size.

MACs are counted for one image (batch 1) from the work that dominates a classifier: convolutions
and matrix products. Element-wise ops, pooling and normalisation are not counted (the usual
convention of papers and of fvcore/thop). Two counters that agree on the same network:

- ONNX files (ours or anyone's): shapes come from ONNX shape inference with the batch fixed to 1;
  ``Conv`` (and the int8 ``ConvInteger``/``QLinearConv``) cost output elements x (C_in / groups) x
  kernel area, ``Gemm``/``MatMul`` (and integer variants) output elements x the shared dimension.
  Only the top-level graph is counted (If/Loop bodies are not).
- Our model.pt files: forward hooks on every ``Conv2d`` and ``Linear`` during one forward pass
  (the same formulas; our architectures have no other matrix products).

Parameters: for ONNX, elements of floating-point and 8-bit initializers (shape constants are
int64 and excluded; exported BatchNorm is usually folded into the convolution, so the count can be
a little below PyTorch's); for model.pt, ``sum(p.numel())`` of the model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from compress.export.tensorrt import ENGINE_SUFFIXES
from compress.models import count_params, load_model

CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> index of the weight input
MATMUL_OPS = {"Gemm": 1, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3}
PARAM_TYPES = {1, 2, 3, 10, 16}  # float, uint8, int8, float16, bfloat16 (onnx.TensorProto)


def model_facts(path: Path) -> dict[str, Any]:
    """``{"format", "params", "macs", "bytes"}`` of an ONNX file or one of our model files."""
    if path.suffix in ENGINE_SUFFIXES:  # a compiled engine: no graph to count from
        return {"format": "tensorrt", "params": None, "macs": None, "bytes": path.stat().st_size}
    if path.suffix == ".onnx":
        proto = onnx.load(str(path))
        facts = {"format": "onnx", "params": onnx_params(proto), "macs": onnx_macs(proto)}
    else:
        model, spec, meta = load_model(path)
        height, width = meta.get("preprocess", {}).get("size", [32, 32])
        facts = {
            "format": "pytorch",
            "params": count_params(model),
            "macs": torch_macs(model, (spec.in_channels, height, width)),
        }
    return {**facts, "bytes": path.stat().st_size}


def torch_macs(model: Any, input_chw: tuple[int, int, int]) -> int:
    """MACs of one forward pass on one image, from forward hooks on Conv2d and Linear layers."""
    total = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_chw))
    finally:
        for handle in handles:
            handle.remove()
    return total


def onnx_params(proto: Any) -> int:
    return sum(math.prod(t.dims) for t in proto.graph.initializer if t.data_type in PARAM_TYPES)


def onnx_macs(proto: Any) -> int:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    total = 0
    for node in graph.node:
        out = shapes.get(node.output[0])
        if not out or None in out:
            continue
        if node.op_type in CONV_OPS:
            kernel = shapes.get(node.input[CONV_OPS[node.op_type]])
            if kernel:
                total += math.prod(out) * math.prod(kernel[1:])
        elif node.op_type in MATMUL_OPS:
            a = shapes.get(node.input[0])
            if not a or None in a:
                continue
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            total += math.prod(out) * (a[-2] if trans_a else a[-1])
    return int(total)
