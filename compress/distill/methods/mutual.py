"""mutual: deep mutual learning, Zhang et al. 2018, "Deep Mutual Learning" (arXiv:1706.00384).

The student and ``peers`` freshly initialised copies of it train together from scratch; each
learns from the labels and from every other's predictions, no pretrained teacher:

    L = sum_i [ CE(z_i, y) + T^2 / (K - 1) * sum_{j != i} KL(p_j || p_i) ]

with p_j detached in the term that trains i. The stage keeps the first student; the peers'
accuracy is reported beside it.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compress.distill.base import METHODS, ClassifierLossParams, DistillLoss, Features, MethodSpec
from compress.distill.methods.kd import kd_divergence


class MutualParams(ClassifierLossParams):
    name: Literal["mutual"] = "mutual"
    peers: int = Field(1, ge=1, le=7, description="extra students trained alongside")
    temperature: float = Field(1.0, gt=0.0, description="softening temperature T")


def fresh_copy(model: nn.Module) -> nn.Module:
    peer = copy.deepcopy(model)
    for module in peer.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return peer


class MutualLoss(DistillLoss):
    def __init__(self, params: MutualParams, shapes: object = None, student: object = None) -> None:
        super().__init__()
        assert isinstance(student, nn.Module), "mutual learning needs the student"
        self.params = params
        self.peers = nn.ModuleList(fresh_copy(student) for _ in range(params.peers))

    def forward(self, student, teacher, labels, features: Features | None = None):
        p = self.params
        logits = [student] + [peer(features.inputs) for peer in self.peers]
        total = 0.0
        for i, z_i in enumerate(logits):
            total = total + F.cross_entropy(z_i, labels, label_smoothing=p.label_smoothing)
            for j, z_j in enumerate(logits):
                if j != i:
                    kl = kd_divergence(z_i, z_j.detach(), p.temperature)
                    total = total + kl / (len(logits) - 1)
        return total


METHODS.register("mutual")(
    MethodSpec(
        params=MutualParams,
        build=MutualLoss,
        uses_teacher=False,
        paper="Zhang et al. 2018, arXiv:1706.00384",
        summary="students trained together from scratch, each distils the others (peers)",
    )
)
