"""contrastive: InfoNCE between projected student and teacher embeddings, in-batch negatives.

In the spirit of CRD (Tian et al. 2020, arXiv:1910.10699) without its memory bank, which grows
with the dataset: each student embedding must pick its own image's teacher embedding out of
the batch.

    z_s = norm(W_s pool(f_s)),  z_t = norm(W_t pool(f_t)),  logits = z_s z_t^T / tau
    L = ce_weight * CE + nce_weight * CE(logits, diag)

The teacher features are fixed (no gradient); both projection heads are learned.

Two limits, on purpose: the InfoNCE is one-directional (student anchors pick among teacher
embeddings; the symmetric teacher->student term is not added), and the negatives are the
other images of the batch each process sees. Under torchrun every process contrasts against
its own ``batch_size`` images only, not the global batch (no all_gather of embeddings), so N
processes give the same number of negatives per anchor as one process at that batch size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compress.distill.base import (
    METHODS,
    DistillLoss,
    FeatureLossParams,
    Features,
    FeatureShapes,
    LayerPair,
    MethodSpec,
    embedding_size,
    hard_label_ce,
    pooled,
)


class ContrastiveParams(FeatureLossParams):
    name: Literal["contrastive"] = "contrastive"
    pair: LayerPair = Field(
        default_factory=lambda: LayerPair(student="features", teacher="layer4"),
        description="layers whose pooled outputs are projected",
    )
    dim: int = Field(128, ge=2, description="projection size")
    tau: float = Field(0.1, gt=0.0, description="InfoNCE temperature")
    nce_weight: float = Field(0.8, ge=0.0, description="weight of the InfoNCE term")

    def layers(self) -> tuple[list[str], list[str]]:
        return [self.pair.student], [self.pair.teacher]


def info_nce(z_student: torch.Tensor, z_teacher: torch.Tensor, tau: float) -> torch.Tensor:
    logits = F.normalize(z_student, dim=1) @ F.normalize(z_teacher, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class ContrastiveLoss(DistillLoss):
    def __init__(
        self, params: ContrastiveParams, shapes: FeatureShapes, student: object = None
    ) -> None:
        super().__init__()
        self.params = params
        self.student_head = nn.Linear(
            embedding_size(shapes.student[params.pair.student]), params.dim
        )
        self.teacher_head = nn.Linear(
            embedding_size(shapes.teacher[params.pair.teacher]), params.dim
        )

    def forward(self, student, teacher, labels, features: Features | None = None):
        p = self.params
        z_s = self.student_head(pooled(features.student[p.pair.student]))
        z_t = self.teacher_head(pooled(features.teacher[p.pair.teacher]).detach())
        ce = hard_label_ce(student, labels, p.label_smoothing)
        return p.ce_weight * ce + p.nce_weight * info_nce(z_s, z_t, p.tau)


METHODS.register("contrastive")(
    MethodSpec(
        params=ContrastiveParams,
        build=ContrastiveLoss,
        uses_teacher=True,
        paper="InfoNCE (Oord et al. 2018); CRD, Tian et al. 2020, arXiv:1910.10699",
        summary="in-batch InfoNCE on projected embeddings (pair, dim, tau, nce_weight)",
    )
)
