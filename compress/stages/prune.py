"""prune: remove whole channels from the student, then win the accuracy back by distillation.

Reports params, MACs, file size, accuracy and onnxruntime latency before pruning, after pruning
and after fine-tuning. The latency of the unpruned and the pruned student is measured side by
side in interleaved rounds, so the speed-up is a ratio from one measurement, not two.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from compress import distributed
from compress.bench.sidebyside import models_side_by_side
from compress.config.base import TrainConfig, registered
from compress.distill.config import DistillSettings
from compress.models import load_model
from compress.prune.structured import PruneTarget, count_macs_params, prune
from compress.registry import IMPORTANCES
from compress.stages.base import STAGES, StageConfig, StageContext, StageResult, StageSpec
from compress.stages.common import distill_in_stage, finish_model
from compress.train.evaluate import evaluate
from compress.ui import console


class PruneConfig(DistillSettings, TrainConfig, StageConfig):
    type: Literal["prune"] = "prune"
    importance: registered(IMPORTANCES) = Field(  # type: ignore[valid-type]
        "l2", description="how channels are ranked for removal"
    )
    global_ranking: bool = Field(False, description="rank channels across layers, not per layer")
    keep_macs: float | None = Field(
        None, gt=0.0, lt=1.0, description="keep at most this fraction of MACs (default 0.5)"
    )
    keep_params: float | None = Field(None, gt=0.0, lt=1.0, description="or of parameters")
    channel_ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="or remove this fraction of every layer's channels"
    )
    steps: int = Field(5, ge=1, description="iterative pruning steps for channel_ratio")
    round_to: int | None = Field(8, ge=1, description="channel counts rounded to a multiple")
    ignored_layers: list[str] = Field(
        default_factory=list, description="module paths left whole (the classifier always is)"
    )
    latency_batch_size: int = Field(32, ge=1, description="batch size of the before/after timing")

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        given = [k for k in ("keep_macs", "keep_params", "channel_ratio") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one pruning target, not {' and '.join(given)}")
        if not given:
            self.keep_macs = 0.5
        return self

    def target(self) -> PruneTarget:
        if self.channel_ratio:
            return PruneTarget("channels", self.channel_ratio)
        if self.keep_params:
            return PruneTarget("params", self.keep_params)
        return PruneTarget("macs", self.keep_macs or 0.5)


def run(cfg: PruneConfig, ctx: StageContext) -> StageResult:
    source = ctx.input("student")
    model, spec, _ = load_model(source.path())
    data = ctx.data()
    pre = data.preprocess
    example = torch.randn(1, pre.channels, pre.size, pre.size)
    unpruned = copy.deepcopy(model).eval()
    before = _facts(model, example, source.metrics.get("top1"))

    history = prune(
        model,
        example,
        importance=cfg.importance,
        target=cfg.target(),
        global_ranking=cfg.global_ranking,
        steps=cfg.steps,
        round_to=cfg.round_to or 1,
        ignored_layers=cfg.ignored_layers,
        accumulate_gradients=lambda: _taylor_gradients(model, ctx),
    )
    after_prune = _facts(model, example, evaluate(model, data, data.test, ctx.device)["top1"])
    console.print(
        f"  pruned to {after_prune['macs'] / before['macs']:.2f} of MACs, "
        f"{after_prune['params'] / before['params']:.2f} of params in {len(history)} steps; "
        f"top1 {before['top1']:.4f} -> {after_prune['top1']:.4f} before fine-tuning"
    )
    fit = distill_in_stage(model, cfg, cfg, ctx, f"{ctx.name} fine-tune ({cfg.method_name()})")
    # timed on rank 0 alone (the others wait here) so processes do not share the cores
    latency = distributed.broadcast(
        _side_by_side(unpruned, model, ctx, cfg.latency_batch_size) if distributed.is_main()
        else None
    )  # fmt: skip
    extra: dict[str, Any] = {
        "macs": after_prune["macs"],
        "before": before,
        "after_prune": after_prune,
        "macs_kept": after_prune["macs"] / before["macs"],
        "params_kept": after_prune["params"] / before["params"],
        "latency_ms": latency,
        # p50 ratio: robust to the outliers a shared machine adds to the mean
        "onnxruntime_speedup": latency["unpruned"]["p50"] / latency["pruned"]["p50"],
        "method": cfg.method_name(),
    }
    result = finish_model(model, replace(spec, pruned=True), ctx, "student", fit.history, extra)
    result.metrics["top1_change"] = result.metrics["top1"] - before["top1"]
    console.print(
        f"  after fine-tuning: top1 {result.metrics['top1']:.4f} "
        f"({100 * result.metrics['top1_change']:+.2f} points), onnxruntime throughput "
        f"x{extra['onnxruntime_speedup']:.2f} at batch {cfg.latency_batch_size}"
    )
    return result


def _facts(model: torch.nn.Module, example: torch.Tensor, top1: float | None) -> dict[str, Any]:
    macs, params = count_macs_params(model, example)
    return {"top1": top1, "macs": macs, "params": params}


def _taylor_gradients(model: torch.nn.Module, ctx: StageContext, batches: int = 4) -> None:
    """Cross-entropy gradients on a few training batches, for Taylor importance."""
    data = ctx.data()
    model.train()
    for i, (x, y, _) in enumerate(data.train_batches(0, data.cfg.batch_size, "none")):
        if i == batches:
            break
        F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device)).backward()


def _side_by_side(
    unpruned: torch.nn.Module, pruned: torch.nn.Module, ctx: StageContext, batch_size: int
) -> dict[str, dict[str, float]]:
    pre = ctx.data().preprocess
    shape = (pre.channels, pre.size, pre.size)
    stats = models_side_by_side({"unpruned": unpruned, "pruned": pruned}, shape, batch_size)
    for name, s in stats.items():
        console.print(f"  {name:<9} onnxruntime batch {batch_size}: p50 {s['p50']:.3f} ms, "
                      f"{s['throughput']:,.0f} img/s")  # fmt: skip
    return stats


STAGES.register("prune")(
    StageSpec(
        config=PruneConfig,
        run=run,
        produces="student",
        consumes=lambda cfg: {"student": True, "teacher": cfg.uses_teacher()},
        summary="structured channel pruning (torch-pruning) + distillation fine-tuning",
        distributed=True,
    )
)
