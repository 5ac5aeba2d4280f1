"""The ``method`` block every stage that distils shares (distill, and prune's fine-tuning)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, field_validator

from compress.config.base import StrictModel
from compress.distill.base import METHODS, MethodParams

METHODS.load()  # the method union below is built from every registered method
MethodConfig = Annotated[
    Union[tuple(spec.params for _, spec in METHODS.items())],  # noqa: UP007
    Field(discriminator="name"),
]


class DistillSettings(StrictModel):
    """Which method trains the student from the teacher, and whether its logits are cached."""

    method: MethodConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: METHODS.get("kd").params(),
        description="a method name (kd), {name: kd, temperature: 4}, or {name: mix, parts: [...]}",
    )
    cache_teacher: bool = Field(
        True,
        description="reuse teacher logits and tapped features across epochs when augment is none",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def methods(self) -> list[MethodParams]:
        """The methods whose losses are added: the parts of a mix, or the one method."""
        return list(getattr(self.method, "parts", None) or [self.method])

    def method_name(self) -> str:
        return "+".join(p.name for p in self.methods())

    def uses_teacher(self) -> bool:
        return any(METHODS.get(p.name).uses_teacher for p in self.methods())

    def layers(self) -> tuple[list[str], list[str]]:
        return self.method.layers()
