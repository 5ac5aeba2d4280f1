"""What a stage is: a config model, the artifact kinds it consumes and produces, and ``run``.

Stages never call each other. A stage's inputs are artifacts that earlier stages recorded in the
run manifest; the runner resolves them (nearest earlier producer, or the stage named in
``input``) and hands them over as paths, so any stage can re-run alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.config.base import DataConfig, StageConfig
from compress.data.module import DataModule, get_data
from compress.registry import STAGES


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
    # check(name, cfg, pipeline) -> a problem the whole pipeline has with this stage, or None
    check: Callable[[str, Any, Any], str | None] = lambda name, cfg, pipeline: None
    # raised when what the stage records changes, so finished entries of older versions re-run
    version: int = 1


__all__ = ["STAGES", "StageConfig", "StageContext", "StageInput", "StageResult", "StageSpec"]


@dataclass
class StageInput:
    """An earlier stage's manifest entry, as this stage sees it."""

    stage: str
    kind: str
    entry: dict[str, Any]
    run_dir: Path

    def path(self, artifact: str = "model") -> Path:
        return self.run_dir / self.entry["artifacts"][artifact]["path"]

    def has(self, artifact: str) -> bool:
        return artifact in self.entry.get("artifacts", {})

    @property
    def metrics(self) -> dict[str, Any]:
        return self.entry.get("metrics", {})


@dataclass
class StageContext:
    """What one stage run is given: its inputs (manifest entries of earlier stages), its folder,
    its data and seed. Nothing else of the pipeline or the manifest."""

    name: str
    run_dir: Path
    stage_dir: Path
    inputs: dict[str, StageInput]
    fingerprint: str
    device: torch.device
    data_config: DataConfig  # the stage's own data block, or the pipeline's
    seed: int  # the pipeline's seed

    def data_cfg(self) -> DataConfig:
        return self.data_config

    def data(self) -> DataModule:
        return get_data(self.data_config, self.seed)

    def input(self, kind: str) -> StageInput:
        return self.inputs[kind]


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_stages() -> None:
    """Import every stage module so each registers itself."""
    STAGES.load()
