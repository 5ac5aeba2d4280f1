"""Fake-quantized layers that compute what onnxruntime's integer kernels will compute.

Weights: INT8, symmetric, one scale per output channel (zero point 0), scale = max|w| / qmax,
recomputed from the live weights at every step so training sees the rounding it will ship with.
``qmax`` is 127, or 63 with ``reduce_range``: 7-bit weights keep the u8 x s8 pair sums of AVX2
CPUs without VNNI (``vpmaddubsw``) inside int16, where 8-bit weights can saturate them.
Activations: 8-bit, one scale and zero point per tensor, from ranges observed on calibration
images: unsigned and asymmetric for onnxruntime (its CPU QDQ fusion turns every conv *and* every
residual add into integer kernels only for uint8 activations; with int8 ones the adds and their
neighbouring convs stay float), signed and symmetric (zero point 0) for TensorRT, which accepts
nothing else. Gradients pass straight through the rounding (STE) inside the range.

In ``export`` mode the same layers emit ONNX ``QuantizeLinear``/``DequantizeLinear`` with the
weights stored as int8: the pattern onnxruntime fuses into ``QLinearConv`` and TensorRT reads
as explicit quantization.
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed
from torch import nn
from torch.nn import functional as F

_ops = torch.ops.quantized_decomposed


def weight_scale(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-output-channel symmetric scale: the largest |w| of each channel maps to ``qmax``."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    return (amax / qmax).clamp_min(1e-12).float()


def quantize_weight(weight: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, per-channel scale) exactly as the exported graph stores them."""
    scale = weight_scale(weight, qmax)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.round(weight.detach() / scale.view(shape)).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


class _WeightQuant:
    """Mixin for Conv2d/Linear: the weight goes through per-channel fake quantization."""

    qmax: int
    exporting: bool

    def _setup(self, qmax: int) -> None:
        self.qmax = qmax
        self.exporting = False

    def quantized_weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        if self.exporting:  # int8 constant + DequantizeLinear(axis=0) in the ONNX graph
            zeros = torch.zeros_like(self.w_scale, dtype=torch.int32)
            return _ops.dequantize_per_channel(
                self.w_int8, self.w_scale, zeros, 0, -self.qmax, self.qmax, torch.int8
            )
        scale = weight_scale(weight, self.qmax)
        zeros = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            weight, scale, zeros, 0, -self.qmax, self.qmax
        )

    def freeze(self) -> None:
        """Store the int8 weights for export (not in the state_dict: they derive from it)."""
        q, scale = quantize_weight(self.weight, self.qmax)  # type: ignore[attr-defined]
        self.register_buffer("w_int8", q, persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("w_scale", scale, persistent=False)  # type: ignore[attr-defined]
        self.exporting = True


class QConv2d(_WeightQuant, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, qmax: int) -> QConv2d:
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )  # fmt: skip
        q.load_state_dict(conv.state_dict())
        q._setup(qmax)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QLinear(_WeightQuant, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, qmax: int) -> QLinear:
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q.load_state_dict(linear.state_dict())
        q._setup(qmax)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class ActQuant(nn.Module):
    """Per-tensor INT8 quantization of an activation, with its observed range.

    ``observing``: record min/max and pass values through (calibration). Otherwise fake-quantize
    with the range's scale and zero point. ``source``, when set, is the quantizer of this
    tensor's input: ops like max-pool and flatten keep their input's grid, so the output reuses
    it instead of observing its own (and onnxruntime can run them on int8 directly).
    """

    def __init__(self, symmetric: bool = False, source: ActQuant | None = None) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.qmin, self.qmax = (-128, 127) if symmetric else (0, 255)
        self.dtype = torch.int8 if symmetric else torch.uint8
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))
        self.observing = False
        self._frozen: tuple[float, int] | None = None
        object.__setattr__(self, "_source", source)  # a reference, not a submodule

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if bool(self.seen):
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.seen.fill_(True)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point with 0.0 exactly representable (padding and ReLU need it)."""
        if self._source is not None:
            return self._source.qparams()
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        if self.symmetric:
            scale = (torch.maximum(-lo, hi) / self.qmax).clamp_min(1e-8)
            return scale.float(), torch.zeros((), dtype=torch.int32)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(1e-8)
        zero_point = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax)
        return scale.float(), zero_point.to(torch.int32)

    def freeze(self) -> None:
        scale, zero_point = self.qparams()
        self._frozen = (float(scale), int(zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None:  # export: QuantizeLinear -> DequantizeLinear
            scale, zp = self._frozen
            q = _ops.quantize_per_tensor(x, scale, zp, self.qmin, self.qmax, self.dtype)
            return _ops.dequantize_per_tensor(q, scale, zp, self.qmin, self.qmax, self.dtype)
        if self.observing:
            if self._source is None:
                self.observe(x)
            return x
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        shared = " shared" if self._source is not None else ""
        return f"range=[{float(self.lo):.4g}, {float(self.hi):.4g}]{shared}"
