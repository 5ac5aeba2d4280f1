"""Which kernels onnxruntime really runs for a graph: the check that an INT8 file is fast.

A Q/DQ graph is only a promise: onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into
QLinearConv when the pattern fits, and otherwise runs a float Conv between the casts, slower than
the plain FP32 model. Counting op types in the optimised graph tells which happened.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

INTEGER_OPS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")
FLOAT_COMPUTE_OPS = {"Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "Add"}


def runtime_ops(path: Path) -> dict[str, int]:
    """Op type counts of ``path`` after onnxruntime's graph optimisations (CPU provider).

    Uses the extended level: it holds the QDQ fusions but not the layout rewrites that tie the
    saved graph to this very CPU, so the counts mean the same on every x86 machine.
    """
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def integer_summary(ops: dict[str, int]) -> dict[str, int]:
    """Integer kernels vs float compute ops left in the optimised graph."""
    integer = sum(n for op, n in ops.items() if op.startswith(INTEGER_OPS))
    floating = sum(n for op, n in ops.items() if op in FLOAT_COMPUTE_OPS)
    return {"integer_ops": integer, "float_compute_ops": floating}
