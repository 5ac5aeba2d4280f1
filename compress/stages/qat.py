"""qat: quantization-aware fine-tuning with distillation, from a calibrated INT8 start.

The student trains through the same rounding it will ship with (BatchNorm folded, per-channel
INT8 weights, 8-bit activations), learning from the teacher at a low learning rate. Its metrics
hold the float top-1, the top-1 after calibration alone (PTQ) and after fine-tuning, so the
gain of QAT over PTQ is read off one stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.config.base import TrainConfig
from compress.distill.config import DistillSettings
from compress.quant.config import QuantSettings
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.common import distill_in_stage
from compress.stages.quantized import check_traceable, finish_quantized, quantize_input


class QatConfig(QuantSettings, DistillSettings, TrainConfig, StageConfig):
    type: Literal["qat"] = "qat"
    epochs: int = Field(2, ge=0, description="fine-tuning passes over the training split")
    lr: float = Field(0.005, gt=0.0, description="peak learning rate (low: weights are close)")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty; folded weights need none")
    schedule: Literal["cosine", "onecycle", "step", "constant"] = Field(
        "cosine", description="learning-rate schedule over the fine-tuning"
    )

    @model_validator(mode="after")
    def _logit_methods_only(self) -> QatConfig:
        student_layers, _ = self.layers()
        if student_layers:
            raise ValueError(
                f"qat distils from logits (kd, dkd, baseline, ...): BatchNorm folding removes "
                f"the student modules feature methods hook ({', '.join(student_layers)})"
            )
        return self


def run(cfg: QatConfig, ctx: StageContext) -> StageResult:
    model, spec, metrics = quantize_input(cfg, ctx)
    label = f"{ctx.name} INT8 fine-tune ({cfg.method_name()})"
    fit = distill_in_stage(model, cfg, cfg, ctx, label)
    metrics["method"] = cfg.method_name()
    result = finish_quantized(model, spec, ctx, fit.history, metrics)
    result.metrics["qat_gain_over_ptq"] = result.metrics["top1"] - metrics["ptq_top1"]
    return result


STAGES.register("qat")(
    StageSpec(
        config=QatConfig,
        run=run,
        produces="student",
        consumes=lambda cfg: {"student": True, "teacher": cfg.uses_teacher()},
        distributed=True,  # every process under torchrun: evaluation is sharded across them
        check=check_traceable,
        summary="quantization-aware INT8 fine-tuning with distillation from the teacher",
    )
)
