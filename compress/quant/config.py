"""The settings the ptq and qat stages share: which integer scheme, and how to calibrate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.config.base import StrictModel
from compress.quant.prepare import QuantSpec


class QuantSettings(StrictModel):
    target: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime",
        description="runtime the INT8 graph is shaped for: onnxruntime (uint8 activations, "
        "fast on CPU) or tensorrt (symmetric int8, what TensorRT accepts)",
    )
    reduce_range: bool | None = Field(
        None,
        description="7-bit weights, exact on x86 CPUs without VNNI; default: on for "
        "onnxruntime, off for tensorrt",
    )
    calibration_images: int = Field(
        1024, ge=1, description="training images drawn at random to set activation ranges"
    )
    float_layers: list[str] = Field(
        [],
        description="conv/linear module paths (`compress layers MODEL`) kept in float, e.g. "
        "a 1-channel first conv, which onnxruntime runs ~3x slower in INT8 than in FP32",
    )

    def quant_spec(self) -> QuantSpec:
        reduce_range = (
            self.target == "onnxruntime" if self.reduce_range is None else self.reduce_range
        )
        return QuantSpec(
            target=self.target,
            reduce_range=reduce_range,
            float_layers=tuple(self.float_layers),
        )
