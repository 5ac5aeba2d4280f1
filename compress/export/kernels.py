"""Which kernels onnxruntime really runs for a graph: the check that an INT8 file is fast.

A Q/DQ graph is only a promise: onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into
QLinearConv when the pattern fits, and otherwise runs a float Conv between the casts, slower than
the plain FP32 model. Counting op types in the optimised graph tells which happened.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

INTEGER_OPS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")
EIGHT_BIT_TYPES = {2, 3}  # onnx.TensorProto.UINT8, INT8
FLOAT_COMPUTE_OPS = {"Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "Add"}


def runtime_ops(path: Path) -> dict[str, int]:
    """Op type counts of ``path`` after onnxruntime's graph optimisations (CPU provider)."""
    graph = optimized_graph(path)
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def optimized_graph(path: Path) -> Any:
    """The graph onnxruntime runs for ``path`` (CPU provider), as an onnx GraphProto.

    Uses the extended level: it holds the QDQ fusions but not the layout rewrites that tie the
    saved graph to this very CPU, so the counts mean the same on every x86 machine.
    """
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(optimized), load_external_data=False).graph


def float_ops(graph: Any) -> dict[str, int]:
    """Op types (with counts) of an optimised graph that compute on float tensors.

    A tensor is 8-bit when a QuantizeLinear or an integer kernel makes it, or an op such as
    MaxPool or Reshape passes an 8-bit input through (onnxruntime runs those on uint8); any other
    op that reads a float tensor (a graph input, a DequantizeLinear's output) counts as float.
    """
    eight_bit = {t.name for t in graph.initializer if t.data_type in EIGHT_BIT_TYPES}
    found: Counter[str] = Counter()
    for node in graph.node:
        makes_8bit = node.op_type == "QuantizeLinear" or node.op_type.startswith(INTEGER_OPS)
        data = [name for name in node.input[:1] if name]
        if not makes_8bit and node.op_type != "DequantizeLinear":
            if data and data[0] in eight_bit:
                makes_8bit = True  # an 8-bit tensor passed through (MaxPool, Reshape, ...)
            else:
                found[node.op_type] += 1
        if makes_8bit:
            eight_bit.update(node.output)
    return dict(sorted(found.items()))


def integer_summary(ops: dict[str, int]) -> dict[str, int]:
    """Integer kernels vs float compute ops left in the optimised graph."""
    integer = sum(n for op, n in ops.items() if op.startswith(INTEGER_OPS))
    floating = sum(n for op, n in ops.items() if op in FLOAT_COMPUTE_OPS)
    return {"integer_ops": integer, "float_compute_ops": floating}
