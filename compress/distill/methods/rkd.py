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
    """<e_ij, e_kj> for all i, j, k (e_ij: unit vector from e_j to e_i), flattened as [j, i, k].

    Computed from the Gram matrix, <e_i - e_j, e_k - e_j> = G_ik - G_ij - G_jk + G_jj, so the
    cost is B^3 scalars instead of the B x B x D difference tensor and a B^3 * D batched matmul
    (43 GFLOP per call at batch 256 and 1280 channels). Embeddings are centred first (angles
    are translation-invariant), which keeps the Gram form's cancellation error small. A zero
    difference (i == j, k == j, or two embeddings closer than 1e-4 of the batch's largest
    distance, whose direction float32 cannot resolve) gives 0, as F.normalize does for 0.
    """
    e = e - e.mean(dim=0, keepdim=True)
    gram = e @ e.T
    # [j, i] = ||e_i - e_j||, from the differences (B^2 * D): exact 0 for equal embeddings
    distance = torch.cdist(e, e, p=2, compute_mode="donot_use_mm_for_euclid_dist")
    valid = distance > 1e-4 * distance.amax().detach().clamp_min(1e-12)
    inverse = torch.where(valid, 1.0 / torch.where(valid, distance, 1.0), 0.0)
    inner = gram.unsqueeze(0) - gram.unsqueeze(2) - gram.unsqueeze(1)
    inner = inner + gram.diagonal().view(-1, 1, 1)
    return (inner * inverse.unsqueeze(2) * inverse.unsqueeze(1)).flatten()


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
