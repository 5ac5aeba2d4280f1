"""Turn a float model into its fake-quantized twin: fold BatchNorm, quantize weights and insert
activation quantizers exactly where onnxruntime's QDQ fusion expects them.

Where the quantizers go decides whether the exported INT8 graph is fast. Each conv's input must
arrive through DequantizeLinear and its output (after its ReLU/ReLU6, which the quantized range
then makes redundant) must leave through QuantizeLinear; residual adds get quantized inputs and
output; max-pool and flatten keep their input's grid. The model's logits stay float.

The transformation is deterministic, so a quantized checkpoint is the float architecture's spec,
the quantization settings and the transformed model's state_dict: ``load_model`` rebuilds it.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.nn import functional as F
from torchvision.ops import stochastic_depth  # identity in eval mode, where the model is traced

from compress.errors import CompressError, did_you_mean
from compress.quant.fakequant import ActQuant, QConv2d, QLinear

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
ACTIVATION_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardtanh}
ADDS = {operator.add, operator.iadd, torch.add}
POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.avg_pool2d}
# elementwise ops onnxruntime may run in float (HardSwish) or on QLinear kernels (Sigmoid, Mul):
# their inputs arrive dequantized and their output is quantized again for the next conv
FLOAT_UNARY = (nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh, nn.LeakyReLU)
FLOAT_UNARY_FUNCTIONS = {F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, F.silu, F.gelu,
                         torch.tanh, F.leaky_relu}  # fmt: skip
MULS = {operator.mul, operator.imul, torch.mul}
PRODUCE_METHODS = {"mean", "sigmoid"}  # timm's global pool (x.mean((2, 3))), SE gates
PASS_THROUGH = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
PASS_THROUGH_FUNCTIONS = {F.max_pool2d, torch.flatten, F.dropout, stochastic_depth}
PASS_THROUGH_METHODS = {"flatten", "view", "reshape", "contiguous"}


@dataclass(frozen=True)
class QuantSpec:
    """How a model was quantized; stored in the model file so it can be rebuilt.

    ``target`` picks the integer scheme the runtime runs fastest: ``onnxruntime`` (uint8
    asymmetric activations, int8 per-channel weights) or ``tensorrt`` (int8 symmetric both).
    """

    target: str = "onnxruntime"
    reduce_range: bool = True  # 7-bit weights: exact on CPUs without VNNI
    float_layers: tuple[str, ...] = ()  # conv/linear module paths left in float

    @property
    def weight_qmax(self) -> int:
        return 63 if self.reduce_range else 127

    @property
    def symmetric_activations(self) -> bool:
        return self.target == "tensorrt"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "float_layers": list(self.float_layers)}  # as JSON keeps it

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "float_layers" in fields:  # a list once it went through JSON
            fields["float_layers"] = tuple(fields["float_layers"])
        return cls(**fields)


def quantize_model(model: nn.Module, spec: QuantSpec) -> fx.GraphModule:
    """A fake-quantized copy of ``model`` (BatchNorm folded); ``model`` is left untouched."""
    model = copy.deepcopy(model).eval()
    try:
        graph_module = fuse(model)  # traces with torch.fx and folds each BatchNorm into its conv
    except Exception as exc:  # tracing failures come in many types
        raise CompressError(
            f"cannot trace {type(model).__name__} for quantization ({exc}); "
            "models with data-dependent control flow are not supported"
        ) from exc
    norms = nn.modules.batchnorm._BatchNorm
    leftover = [n for n, m in graph_module.named_modules() if isinstance(m, norms)]
    if leftover:
        raise CompressError(
            f"BatchNorm layers {leftover[:3]} do not follow a conv and cannot be folded"
        )
    float_layers = _float_layers(graph_module, spec.float_layers)
    _swap_weight_layers(graph_module, spec.weight_qmax, float_layers)
    _insert_activation_quantizers(
        graph_module, spec.symmetric_activations, type(model).__name__, float_layers
    )
    return graph_module


def _float_layers(gm: fx.GraphModule, names: tuple[str, ...]) -> set[str]:
    """The conv/linear layers to leave in float, each checked to exist."""
    weight_layers = [n for n, m in gm.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    for name in names:
        if name not in weight_layers:
            raise CompressError(
                f"float_layers: no conv or linear layer '{name}'{did_you_mean(name, weight_layers)}"
                "; list them with `compress layers MODEL`"
            )
    return set(names)


def _swap_weight_layers(gm: fx.GraphModule, qmax: int, float_layers: set[str]) -> None:
    for name, module in list(gm.named_modules()):
        if name in float_layers:
            continue
        if type(module) is nn.Conv2d:
            _set_module(gm, name, QConv2d.from_float(module, qmax))
        elif type(module) is nn.Linear:
            _set_module(gm, name, QLinear.from_float(module, qmax))


def _insert_activation_quantizers(
    gm: fx.GraphModule, symmetric: bool, label: str, float_layers: set[str]
) -> None:
    graph = gm.graph
    modules = dict(gm.named_modules())
    quantizer_of: dict[fx.Node, ActQuant] = {}
    count = 0

    def add_after(node: fx.Node, quantizer: ActQuant) -> None:
        nonlocal count
        name = f"act_quant_{count}"
        count += 1
        gm.add_submodule(name, quantizer)
        with graph.inserting_after(node):
            q_node = graph.call_module(name, (node,))
        node.replace_all_uses_with(q_node, delete_user_cb=lambda user: user is not q_node)
        quantizer_of[q_node] = quantizer

    def is_float_layer(node: fx.Node) -> bool:
        return node.op == "call_module" and str(node.target) in float_layers

    def kind(node: fx.Node) -> str:
        if node.op == "placeholder":  # a float first layer reads the float input as it is
            return "float" if node.users and all(map(is_float_layer, node.users)) else "produce"
        if node.op == "call_module":
            module = modules[str(node.target)]
            if isinstance(module, (QConv2d, *ACTIVATIONS, *POOLS, *FLOAT_UNARY)):
                return "produce"
            if is_float_layer(node):  # its output is quantized for the integer layers after it
                return "produce" if isinstance(module, nn.Conv2d) else "linear"
            if isinstance(module, QLinear):
                return "linear"
            if isinstance(module, PASS_THROUGH):
                return "pass"
        if node.op == "call_function":
            if node.target in ACTIVATION_FUNCTIONS or node.target in ADDS | MULS:
                return "produce"
            if node.target in FLOAT_UNARY_FUNCTIONS:
                return "produce"
            if node.target in POOL_FUNCTIONS:
                return "produce"
            if node.target in PASS_THROUGH_FUNCTIONS:
                return "pass"
        if node.op == "call_method" and node.target in PASS_THROUGH_METHODS:
            return "pass"
        if node.op == "call_method" and node.target in PRODUCE_METHODS:
            return "produce"
        return "other"

    def feeds_activation(node: fx.Node) -> bool:
        """Whether the output is requantized anyway by the activation after it; a float
        layer also keeps a float activation (hardswish ...) in float, fused into it."""
        users = list(node.users)
        if len(users) != 1:
            return False
        user = users[0]
        kinds, functions = ACTIVATIONS, ACTIVATION_FUNCTIONS
        if is_float_layer(node):
            kinds, functions = (*ACTIVATIONS, *FLOAT_UNARY), functions | FLOAT_UNARY_FUNCTIONS
        if user.op == "call_module":
            return isinstance(modules[str(user.target)], kinds)
        return user.op == "call_function" and user.target in functions

    for node in list(graph.nodes):
        role = kind(node)
        produces = role == "produce" and not feeds_activation(node)
        if produces or (role == "linear" and not _is_output(node)):
            add_after(node, ActQuant(symmetric))
        elif role == "pass":
            source = quantizer_of.get(node.args[0]) if node.args else None
            if source is not None:
                add_after(node, ActQuant(symmetric, source=source))
        elif role == "other" and node.op not in ("output", "get_attr"):
            raise CompressError(
                f"cannot quantize {label}: "
                f"operation {_op_name(node)} in layer {_layer_of(node)} is "
                "not supported; supported: conv, linear, (hard)relu(6), hardswish, (hard)sigmoid, "
                "silu, add, mul, mean, avg/max pooling, flatten, dropout"
            )
    graph.lint()
    gm.recompile()


def _op_name(node: fx.Node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return f"'{name}' ({node.op})"


def _layer_of(node: fx.Node) -> str:
    """The module path and class the traced op came from (torch.fx records the stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return f"'{node.name}' (top level)"
    path, cls = list(stack.values())[-1]
    return f"'{path}' ({getattr(cls, '__name__', cls)})"


def _is_output(node: fx.Node) -> bool:
    return all(user.op == "output" for user in node.users)


def _set_module(gm: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, child, module)


def act_quantizers(model: nn.Module) -> Iterator[ActQuant]:
    return (m for m in model.modules() if isinstance(m, ActQuant))


def set_observing(model: nn.Module, observing: bool) -> None:
    for quantizer in act_quantizers(model):
        quantizer.observing = observing


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterator[torch.Tensor], device: torch.device) -> int:
    """Record every activation's min/max over ``batches``; returns the number of images."""
    model.to(device).eval()
    set_observing(model, True)
    images = 0
    try:
        for x in batches:
            model(x.to(device))
            images += len(x)
    finally:
        set_observing(model, False)
    missing = [q for q in act_quantizers(model) if q._source is None and not bool(q.seen)]
    if missing:
        raise CompressError(f"{len(missing)} activation quantizers saw no data in calibration")
    return images


def freeze_for_export(model: nn.Module) -> nn.Module:
    """A copy whose layers emit QuantizeLinear/DequantizeLinear with int8 weight constants."""
    frozen = copy.deepcopy(model).cpu().eval()
    for module in frozen.modules():
        if isinstance(module, QConv2d | QLinear | ActQuant):
            module.freeze()
    return frozen
