"""ptq: post-training INT8 quantization, calibration only; the cheap baseline QAT must beat."""

from __future__ import annotations

from typing import Literal

from compress.quant.config import QuantSettings
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.quantized import check_traceable, finish_quantized, quantize_input


class PtqConfig(QuantSettings, StageConfig):
    type: Literal["ptq"] = "ptq"


def run(cfg: PtqConfig, ctx: StageContext) -> StageResult:
    model, spec, metrics = quantize_input(cfg, ctx)
    return finish_quantized(model, spec, ctx, [], metrics)


STAGES.register("ptq")(
    StageSpec(
        config=PtqConfig,
        run=run,
        produces="student",
        consumes=lambda cfg: {"student": True},
        distributed=True,  # every process under torchrun: evaluation is sharded across them
        check=check_traceable,
        summary="post-training INT8 quantization: fold BatchNorm, calibrate activation ranges",
    )
)
