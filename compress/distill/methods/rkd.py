"""rkd: Park et al. 2019, "Relational Knowledge Distillation" (arXiv:1904.05068).

    psi_D(t_i, t_j) = ||t_i - t_j|| / mu           (mu: mean pairwise distance in the batch)
    psi_A(t_i, t_j, t_k) = <(t_i - t_j)/||.||, (t_k - t_j)/||.||>
    L = ce_weight * CE + w_d * Huber(psi_D(s), psi_D(t)) + w_a * Huber(psi_A(s), psi_A(t))

on globally pooled embeddings of the named layers (student and teacher sizes may differ:
only relations between samples are compared). Paper weights: w_d = 25, w_a = 50.
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
    pooled,
)


class RKDParams(FeatureLossParams):
    name: Literal["rkd"] = "rkd"
    pair: LayerPair = Field(
        default_factory=lambda: LayerPair(student="features", teacher="layer4"),
        description="layers whose pooled outputs are the embeddings",
    )
    distance_weight: float = Field(25.0, ge=0.0, description="weight of the distance term")
    angle_weight: float = Field(50.0, ge=0.0, description="weight of the angle term")

    def layers(self) -> tuple[list[str], list[str]]:
        return [self.pair.student], [self.pair.teacher]


def distance_potential(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e, p=2)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off_diagonal].mean().clamp_min(1e-12)


def angle_potential(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # <e_ij, e_kj> for all i, j, k


class RKDLoss(DistillLoss):
    def __init__(self, params: RKDParams, shapes: object = None, student: object = None) -> None:
        super().__init__()
        self.params = params

    def forward(self, student, teacher, labels, features: Features | None = None):
        p = self.params
        s = pooled(features.student[p.pair.student])
        with torch.no_grad():
            t = pooled(features.teacher[p.pair.teacher])
        ce = hard_label_ce(student, labels, p.label_smoothing)
        dist = F.smooth_l1_loss(distance_potential(s), distance_potential(t))
        angle = F.smooth_l1_loss(angle_potential(s), angle_potential(t))
        return p.ce_weight * ce + p.distance_weight * dist + p.angle_weight * angle


METHODS.register("rkd")(
    MethodSpec(
        params=RKDParams,
        build=RKDLoss,
        uses_teacher=True,
        paper="Park et al. 2019, arXiv:1904.05068",
        summary="distance and angle relations between samples (distance_weight, angle_weight)",
    )
)
