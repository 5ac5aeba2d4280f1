"""The pipeline file: global settings, ``data``, then stages in the order they run.

A top-level key that is not a global setting is a stage; its type defaults to its name::

    name: quickstart
    data: {dataset: fashion-mnist}
    teacher: {model: {arch: resnet34}, epochs: 2}
    distill: {student: {arch: mobilenet_v2}, method: {name: kd, temperature: 4}}
    export: {}
    bench: {}

Two stages of one type need distinct names and an explicit ``type``.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, create_model, model_validator

from compress.config.base import DataConfig, StrictModel
from compress.config.grid import GridConfig
from compress.registry import STAGES


class GatesConfig(StrictModel):
    """Pass/fail limits checked after the stages; ``compress run`` exits with code 3 naming the
    gate that failed. Every gate reads the last bench stage of the pipeline; unset gates are off.

    - ``max_accuracy_drop``: teacher top-1 minus the benched ONNX file's top-1, in percentage
      points, both on the held-out test split (0.5 allows 90.0% -> 89.5%).
    - ``max_p99_ms``: p99 latency in ms of the ONNX file on onnxruntime (CPU) at ``batch_size``.
    - ``min_speedup``: teacher p50 latency (PyTorch eager, CPU) divided by the ONNX file's p50 on
      onnxruntime (CPU), both at ``batch_size`` and measured in the same bench stage.
    """

    max_accuracy_drop: float | None = Field(
        None, ge=0.0, description="points of top-1 the ONNX file may lose against the teacher"
    )
    max_p99_ms: float | None = Field(
        None, gt=0.0, description="p99 ms of the ONNX file on onnxruntime at batch_size"
    )
    min_speedup: float | None = Field(
        None, gt=0.0, description="teacher PyTorch p50 / ONNX onnxruntime p50 at batch_size"
    )
    batch_size: int = Field(1, ge=1, description="batch size the latency gates read")

    def active(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if k != "batch_size" and v is not None}


STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
RESERVED_NAMES = {"cache"}  # folders the runner itself writes in the run directory


class PipelineSettings(StrictModel):
    """Global keys of a pipeline file."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="run name; the default run directory is runs/<name>/",
    )
    description: str = Field("", description="free text, kept in the manifest")
    seed: int = Field(0, ge=0, description="seeds weights, shuffling, augmentation and splits")
    deterministic: bool = Field(
        False, description="deterministic kernels: same seed, same metrics (slower)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where stages train and evaluate; auto: cuda when available"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads of each job; default: the cores / jobs"
    )
    jobs: int = Field(
        1,
        ge=1,
        description="stages trained at once, each in its own process, when their inputs are "
        "ready (grid cells); 2 jobs of 1 thread beat 1 job of 2 threads on small models",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset every stage uses")
    grid: GridConfig | None = Field(
        None, description="compare methods x seeds, and sweeps of T and alpha (see Comparisons)"
    )
    gates: GatesConfig = Field(
        default_factory=GatesConfig, description="limits checked after the run (exit code 3)"
    )

    @model_validator(mode="after")
    def _check_stage_names(self) -> PipelineSettings:
        """Stage names become folders of the run directory: none may lead outside it."""
        for name in getattr(self, "stages", {}):
            if not STAGE_NAME.fullmatch(name) or ".." in name:
                raise ValueError(
                    f"stage name '{name}': names are run-directory folders: letters, digits, "
                    ". _ - + only, no '/' or '..', not starting with '.'"
                )
            if name in RESERVED_NAMES:
                raise ValueError(f"stage name '{name}' is taken by the run directory's {name}/")
        return self

    @model_validator(mode="after")
    def _check_best_val_has_a_split(self) -> PipelineSettings:
        """``select: best_val`` picks an epoch on the validation split: there must be one."""
        for name, cfg in self.stage_items():
            data = cfg.data or self.data
            if getattr(cfg, "select", None) == "best_val" and data.val_split == 0:
                raise ValueError(
                    f"{name}.select: best_val needs a validation split: set data.val_split > 0 "
                    "(e.g. 0.1), or select: last"
                )
        return self

    @model_validator(mode="after")
    def _check_stage_inputs(self) -> PipelineSettings:
        stages: dict[str, Any] = getattr(self, "stages", {})
        if not stages:
            raise ValueError("the pipeline has no stages (e.g. teacher, distill, export, bench)")
        for position, (name, cfg) in enumerate(stages.items()):
            earlier = list(stages.items())[:position]
            for i, (kind, required) in enumerate(STAGES.get(cfg.type).consumes(cfg).items()):
                producer = find_producer(earlier, kind, cfg.input if i == 0 else None)
                if producer is None and required:
                    explicit = cfg.input if i == 0 else None
                    raise ValueError(_no_producer_message(name, kind, explicit, earlier))
            for kind, source in STAGES.get(cfg.type).extra_inputs(cfg).values():
                if find_producer(earlier, kind, source) is None:
                    raise ValueError(
                        f"stage '{name}' needs the {kind} output of '{source}', which is not an "
                        f"earlier stage that produces one"
                    )
        return self

    @model_validator(mode="after")
    def _gates_need_a_bench_stage(self) -> PipelineSettings:
        """Gates read the last bench stage; whether it measures them, the bench stage checks."""
        active = self.gates.active()
        if active and not any(c.type == "bench" for _, c in self.stage_items()):
            raise ValueError(f"gates ({', '.join(active)}) need a bench stage")
        return self

    @model_validator(mode="after")
    def _check_each_stage(self) -> PipelineSettings:
        """What a stage type asks of the whole pipeline (the bench stage: measurable gates)."""
        for name, cfg in self.stage_items():
            problem = STAGES.get(cfg.type).check(name, cfg, self)
            if problem:
                raise ValueError(problem)
        return self

    def stage_items(self) -> list[tuple[str, Any]]:
        return list(getattr(self, "stages", {}).items())

    def to_yaml(self) -> str:
        """The resolved config, every default visible, in the same layout as the file."""
        dumped = self.model_dump(mode="json")
        stages = dumped.pop("stages", {})
        return yaml.safe_dump({**dumped, **stages}, sort_keys=False, width=100)


MODEL_KINDS = ("teacher", "student")


def find_producer(earlier: list[tuple[str, Any]], kind: str, explicit: str | None) -> str | None:
    """The stage whose output of ``kind`` a stage consumes (``input`` names it explicitly)."""
    produced = {name: STAGES.get(cfg.type).produces for name, cfg in earlier}
    if explicit is not None:
        explicit_kind = produced.get(explicit)
        if explicit_kind == kind or (kind in MODEL_KINDS and explicit_kind in MODEL_KINDS):
            return explicit
        return None
    for name, produces in reversed(list(produced.items())):
        if produces == kind:
            return name
    return None


def _no_producer_message(
    name: str, kind: str, explicit: str | None, earlier: list[tuple[str, Any]]
) -> str:
    if explicit is not None:
        return f"{name}.input: '{explicit}' is not an earlier stage that produces a {kind}"
    makers = sorted(n for n, s in STAGES.items() if s.produces == kind)
    before = ", ".join(n for n, _ in earlier) or "nothing"
    return (
        f"stage '{name}' needs the {kind} output of an earlier {' or '.join(makers)} stage; "
        f"before it come: {before} (stages run in file order)"
    )


@functools.cache
def pipeline_model() -> type[PipelineSettings]:
    """Pipeline with its ``stages`` union built from the registered stage types."""
    configs = tuple(spec.config for _, spec in STAGES.items())
    stage_union = Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007
    return create_model(  # type: ignore[call-overload]
        "Pipeline",
        __base__=PipelineSettings,
        stages=(dict[str, stage_union], Field(default_factory=dict)),
    )


def global_keys() -> list[str]:
    return [k for k in PipelineSettings.model_fields]


def stage_types() -> list[str]:
    return STAGES.names()
