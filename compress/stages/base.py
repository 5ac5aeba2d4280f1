"""What a stage is: a config model, the artifact kinds it consumes and produces, and ``run``.

Stages never call each other. A stage's inputs are artifacts that earlier stages recorded in the
run manifest; the runner resolves them (nearest earlier producer, or the stage named in
``input``) and hands them over as paths, so any stage can re-run alone.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from compress.config.base import DataConfig, StrictModel
from compress.registry import Registry

if TYPE_CHECKING:
    from compress.config.pipeline import Pipeline
    from compress.data.module import DataModule


class StageConfig(StrictModel):
    type: str = Field(description="registered stage type; two stages of one type need it")
    input: str | None = Field(
        None, description="stage whose output this stage takes; default: nearest earlier one"
    )
    data: DataConfig | None = Field(
        None,
        description="this stage's own data block instead of the pipeline's (grid.datasets sets it)",
    )


@dataclass(frozen=True)
class StageSpec:
    config: type[StageConfig]
    run: Callable[[Any, StageContext], StageResult]
    produces: str | None  # artifact kind: teacher, student, onnx, bench
    consumes: Callable[[Any], dict[str, bool]]  # kind -> required; the first is the main input
    summary: str
    distributed: bool = False  # trains: runs on every process under torchrun, else on rank 0
    # more required inputs named by stage: input key -> (kind, stage), e.g. extra teachers
    extra_inputs: Callable[[Any], dict[str, tuple[str, str]]] = lambda cfg: {}


STAGES: Registry[StageSpec] = Registry("stage type")


@dataclass
class StageInput:
    """An earlier stage's manifest entry, as this stage sees it."""

    stage: str
    kind: str
    entry: dict[str, Any]
    run_dir: Path

    def path(self, artifact: str = "model") -> Path:
        return self.run_dir / self.entry["artifacts"][artifact]["path"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.entry.get("metrics", {})


@dataclass
class StageContext:
    name: str
    pipeline: Pipeline
    run_dir: Path
    stage_dir: Path
    inputs: dict[str, StageInput]
    fingerprint: str
    device: torch.device
    manifest: dict[str, Any]
    data_config: DataConfig | None = None  # the stage's own data block, if it has one

    def data_cfg(self) -> DataConfig:
        return self.data_config or self.pipeline.data

    def data(self) -> DataModule:
        from compress.data.module import get_data

        return get_data(self.data_cfg(), self.pipeline.seed)

    def input(self, kind: str) -> StageInput:
        return self.inputs[kind]

    def entry(self, stage: str) -> dict[str, Any]:
        """Another stage's manifest entry (read-only), e.g. the metrics of an input's source."""
        return self.manifest.get("stages", {}).get(stage, {})


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_stages() -> None:
    """Import every stage module so each registers itself."""
    from compress import stages

    for info in pkgutil.iter_modules(stages.__path__):
        if info.name != "base":
            importlib.import_module(f"{stages.__name__}.{info.name}")
