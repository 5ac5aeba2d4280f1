"""The ``method`` block every stage that distils shares (distill, and prune's fine-tuning)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, field_validator

from compress.config.base import StrictModel
from compress.distill.base import METHODS, load_methods

load_methods()
MethodConfig = Annotated[
    Union[tuple(spec.params for _, spec in METHODS.items())],  # noqa: UP007
    Field(discriminator="name"),
]


class DistillSettings(StrictModel):
    """Which method trains the student from the teacher, and whether its logits are cached."""

    method: MethodConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: METHODS.get("kd").params(),
        description="a method name (kd) or {name: kd, temperature: 4, alpha: 0.5}",
    )
    cache_teacher: bool = Field(
        True, description="reuse teacher logits across epochs when augment is none"
    )

    @field_validator("method", mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def uses_teacher(self) -> bool:
        return METHODS.get(self.method.name).uses_teacher
