"""mix: a weighted sum of other methods, e.g. kd + fitnets or kd + contrastive.

    method: {name: mix, parts: [{name: kd, alpha: 0.5}, {name: fitnets, ce_weight: 0, weight: 0.5}]}

Each part's loss is multiplied by its ``weight`` and added. Only one part may keep the
hard-label cross-entropy (``ce_weight``; kd: ``alpha``), so it is not counted twice. Its parts
may be any other method: it imports them all before building its config.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator
from torch import nn

from compress.distill.base import METHODS, DistillLoss, FeatureShapes, MethodParams, MethodSpec
from compress.registry import import_all

import_all("compress.distill.methods")  # every method a part may name, whoever imports mix

PartConfig = Annotated[
    Union[tuple(spec.params for _, spec in METHODS.items())],  # noqa: UP007
    Field(discriminator="name"),
]


class MixParams(MethodParams):
    name: Literal["mix"] = "mix"
    parts: list[PartConfig] = Field(  # type: ignore[valid-type]
        default_factory=lambda: [
            METHODS.get("kd").params(alpha=0.5),
            METHODS.get("fitnets").params(ce_weight=0.0),
        ],
        min_length=2,
        description="the methods to add, each with its weight",
    )

    @model_validator(mode="after")
    def _one_cross_entropy(self) -> MixParams:
        if sum(p.hard_label_weight() > 0 for p in self.parts) > 1:
            raise ValueError(
                "only one part of a mix may keep the hard-label loss; set ce_weight: 0 "
                "(kd, self: alpha: 0) on the others"
            )
        return self

    def layers(self) -> tuple[list[str], list[str]]:
        student: list[str] = []
        teacher: list[str] = []
        for part in self.parts:
            s, t = part.layers()
            student += [n for n in s if n not in student]
            teacher += [n for n in t if n not in teacher]
        return student, teacher


class WeightedSum(DistillLoss):
    def __init__(
        self, params: MixParams, shapes: FeatureShapes | None = None, student: object = None
    ) -> None:
        super().__init__()
        self.weights = [p.weight for p in params.parts]
        self.parts = nn.ModuleList(
            METHODS.get(p.name).build(p, shapes, student) for p in params.parts
        )

    def forward(self, student, teacher, labels, features=None):
        return sum(
            w * loss(student, teacher, labels, features)
            for w, loss in zip(self.weights, self.parts, strict=True)
        )


METHODS.register("mix")(
    MethodSpec(
        params=MixParams,
        build=WeightedSum,
        uses_teacher=True,  # when any part does; see DistillSettings.uses_teacher
        paper="-",
        summary="weighted sum of other methods, one keeping the hard-label CE (parts)",
    )
)
