"""attention: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (arXiv:1612.03928).

    Q(A) = vec(mean_c |A_c|^p)
    L = ce_weight * CE + beta/2 * sum_pairs mean_i (Q_s/||Q_s|| - Q_t/||Q_t||)_i^2

with p = 2 and beta = 1000 as in the paper's code (the squared distance is averaged over the
map's positions, which is what makes beta = 10^3 the right scale). Maps of different sizes are
average-pooled to the smaller one before normalising; channel counts may differ freely.

Convention: ``beta/2`` times the sum over pairs, with beta = 1000, is Zagoruyko's (the paper's
eq. 2 and its code's ``beta/2 * sum(at_loss)``). mdistiller (``AT.LOSS.FEAT_WEIGHT: 1000``)
multiplies the same per-position mean by 1000 without the /2, so its term is twice ours at
the same beta: ``beta: 2000`` here reproduces it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.distill.base import (
    METHODS,
    DistillLoss,
    FeatureLossParams,
    Features,
    LayerPair,
    MethodSpec,
    hard_label_ce,
)
from compress.distill.methods.fitnets import align_spatial


class AttentionParams(FeatureLossParams):
    name: Literal["attention"] = "attention"
    pairs: list[LayerPair] = Field(
        default_factory=lambda: [
            LayerPair(student="features.6", teacher="layer2"),
            LayerPair(student="features.13", teacher="layer3"),
        ],
        min_length=1,
        description="student/teacher layers whose attention maps are matched",
    )
    beta: float = Field(1000.0, ge=0.0, description="weight of the attention term")
    p: float = Field(2.0, gt=0.0, description="power applied to activations")

    def layers(self) -> tuple[list[str], list[str]]:
        return [p.student for p in self.pairs], [p.teacher for p in self.pairs]


def attention_distance(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    """Mean squared distance of the L2-normalised maps mean_c |A_c|^p of two feature maps."""
    s_map = student.abs().pow(p).mean(1, keepdim=True)
    t_map = teacher.abs().pow(p).mean(1, keepdim=True)
    s_map, t_map = align_spatial(s_map, t_map)
    s, t = F.normalize(s_map.flatten(1), dim=1), F.normalize(t_map.flatten(1), dim=1)
    return (s - t.detach()).pow(2).mean()


class AttentionLoss(DistillLoss):
    def __init__(
        self, params: AttentionParams, shapes: object = None, student: object = None
    ) -> None:
        super().__init__()
        self.params = params

    def forward(self, student, teacher, labels, features: Features | None = None):
        p = self.params
        ce = hard_label_ce(student, labels, p.label_smoothing)
        at = sum(
            attention_distance(features.student[q.student], features.teacher[q.teacher], p.p)
            for q in p.pairs
        )
        return p.ce_weight * ce + p.beta / 2 * at


METHODS.register("attention")(
    MethodSpec(
        params=AttentionParams,
        build=AttentionLoss,
        uses_teacher=True,
        paper="Zagoruyko & Komodakis 2017, arXiv:1612.03928",
        summary="match normalised spatial attention maps (pairs, beta, p)",
    )
)
