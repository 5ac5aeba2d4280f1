"""Expand a pipeline's ``grid`` block into one distill stage per cell.

    grid:
      template: distill            # the distill stage every cell copies
      seeds: [0, 1, 2]
      methods: [baseline, kd, {name: fitnets, hint_weight: 2}, ...]
      temperatures: [1, 2, 4, 8]   # kd at each T (sweep_method), alpha from the template
      alphas: [0.1, 0.5, 0.9]
      teachers: [resnet18, resnet34, {label: r50, arch: resnet50}]   # teacher-size sweep

Cells are ordinary stages named ``<template>-<label>-s<seed>`` (``-T4-``, ``-a0.5-``,
``-teacher-resnet18-`` for the sweeps), so the runner's skip and resume work per cell, and the
one teacher stage is shared.

``teachers`` sweeps the teacher's size: each entry (an arch name, or a ``model`` block with an
optional ``label``) updates the model of the teacher stage the template distils from. An entry
that changes it becomes a new teacher stage ``teacher-<label>``, trained like that teacher; one
that leaves it unchanged reuses it. Each entry gets sweep_method cells distilling from it.

``datasets`` repeats the whole pipeline per dataset: every stage is copied once per entry
(``<dataset>.teacher``, ``<dataset>.distill-kd-s0``, ...) with its own ``data`` block, the
pipeline's data block updated with the entry's keys, and ``input``/``teachers`` pointing to
the same dataset's copies. An entry is a dataset name or a data block with an optional
``label`` (default: the dataset name; needed when two entries share a dataset)::

    datasets: [fashion-mnist, {label: fmnist-2k, dataset: fashion-mnist, train_subset: 2000}]
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from compress.config.base import StrictModel
from compress.errors import ConfigError
from compress.registry import METHODS


class GridConfig(StrictModel):
    """Which cells to run; results are tabled and plotted by ``compress.compare.report``."""

    template: str = Field("distill", description="the distill stage each cell copies")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="one cell per seed for every method and sweep value",
    )
    methods: list[Any] = Field(
        default_factory=list,
        description="methods to compare (names or method blocks; a block's optional label "
        "names its cells, e.g. {name: fitnets, hint_weight: 10, label: fitnets-h10})",
    )
    temperatures: list[float] = Field(
        default_factory=list, description="sweep sweep_method's temperature over these values"
    )
    alphas: list[float] = Field(
        default_factory=list, description="sweep sweep_method's alpha over these values"
    )
    sweep_method: str = Field(
        "kd", description="the method the T, alpha and teacher-size sweeps use"
    )
    teachers: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="sweep the teacher's size: arch names or model blocks with a label; "
        "sweep_method is distilled from each",
    )
    datasets: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="repeat every stage per dataset: names or data blocks with a label",
    )
    labels: list[int | Literal["all"]] = Field(
        default_factory=list,
        description="repeat the cells (not the teachers) per labelled images per class "
        "(data.labels_per_class; all: every label), scoped labels<N>. / labels-all.",
    )
    unlabeled: list[bool] = Field(
        default_factory=lambda: [False],
        min_length=1,
        description="[false, true]: each cell of a method with a teacher also runs with the "
        "rest of the training split as unlabeled images (data.unlabeled: rest), labelled "
        "<method>+unlabeled; [true]: those cells only use them, names unchanged",
    )

    @model_validator(mode="after")
    def _labels_alone(self) -> GridConfig:
        if self.labels and self.datasets:
            raise ValueError("grid.labels and grid.datasets cannot be combined; use one")
        if True in self.unlabeled and not any(n != "all" for n in self.labels):
            raise ValueError("grid.unlabeled: true needs grid.labels with a count below all")
        return self

    @model_validator(mode="after")
    def _method_labels_name_stages(self) -> GridConfig:
        for method in self.methods:
            label = method.get("label") if isinstance(method, dict) else None
            if label is not None and not re.fullmatch(r"[A-Za-z0-9_+-]+", str(label)):
                raise ValueError(
                    f"grid.methods label {label!r}: letters, digits, '_', '+' and '-' only "
                    "(it becomes part of stage names)"
                )
        return self


def expand_grid(split: dict[str, Any]) -> dict[str, Any]:
    """``split`` (globals + ``stages``) with the template stage replaced by the grid's cells."""
    raw_grid = split.get("grid")
    if raw_grid is None:
        return split
    try:
        grid = GridConfig.model_validate(raw_grid)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("grid", *first["loc"]))
        raise ConfigError(f"{where}: {first['msg']}") from None
    stages: dict[str, Any] = split["stages"]
    template = stages.get(grid.template)
    if not isinstance(template, dict) or template.get("type") != "distill":
        raise ConfigError(f"grid.template: no distill stage named '{grid.template}' to copy")
    sweep_teachers = teacher_stages(grid, stages)
    later = list(stages)[list(stages).index(grid.template) + 1 :]
    moved = grid.labels and any(_is_teacher(stages[n]) for n in later)
    if (sweep_teachers or moved) and not template.get("input") and not template.get("teachers"):
        # the cells name their teacher: neither the sweep's new teacher stages nor a teacher
        # after the template may become "the latest teacher before the cell" once grid.labels
        # moves every teacher stage before the cells
        template = {**template, "input": base_teacher(grid, stages)}
    expanded: dict[str, Any] = {}
    for name, stage in stages.items():
        if name != grid.template:
            expanded[name] = stage
            continue
        for label, method in cells(grid, template):
            for seed in grid.seeds:
                expanded[f"{name}-{label}-s{seed}"] = {**template, "method": method, "seed": seed}
        expanded.update({n: s for n, s in sweep_teachers.values() if n not in stages})
        for label, (teacher, _) in sweep_teachers.items():
            for seed in grid.seeds:
                cell = {k: v for k, v in template.items() if k != "teachers"}
                expanded[f"{name}-{TEACHER_SWEEP}{label}-s{seed}"] = {
                    **cell, "method": sweep_method_block(grid, template), "seed": seed,
                    "input": teacher}  # fmt: skip
    if grid.labels:
        return {**split, "stages": label_cells(grid, expanded, split.get("data") or {})}
    if not grid.datasets:
        return {**split, "stages": expanded}
    per_dataset: dict[str, Any] = {}
    for label, data in dataset_blocks(grid, split.get("data") or {}):
        renamed = {name: f"{label}.{name}" for name in expanded}
        for name, stage in expanded.items():
            if not isinstance(stage, dict):  # left for validation to name
                per_dataset[renamed[name]] = stage
                continue
            copy = {**stage, "data": data}
            if isinstance(stage.get("input"), str):
                copy["input"] = renamed.get(stage["input"], stage["input"])
            if isinstance(stage.get("teachers"), list):
                copy["teachers"] = [renamed.get(t, t) for t in stage["teachers"]]
            per_dataset[renamed[name]] = copy
    return {**split, "stages": per_dataset}


UNLABELED_SUFFIX = "+unlabeled"  # cell label of a method run with data.unlabeled: rest


def label_scope(count: int | str) -> str:
    """The stage-name scope of one ``grid.labels`` entry: labels100, labels-all."""
    return "labels-all" if count == "all" else f"labels{count}"


def label_cells(grid: GridConfig, stages: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Each grid cell once per ``grid.labels`` entry (``labels100.distill-kd-s0``) with the
    template's data block (else the pipeline's) and that many labels per class; with
    ``unlabeled: [.., true]`` a method that has a teacher also gets ``<method>+unlabeled``
    cells on data.unlabeled: rest.
    Teacher stages are left as they are: they train once, on every label."""
    prefix = grid.template + "-"
    out = {name: stage for name, stage in stages.items() if not name.startswith(prefix)}
    # seed by seed, so a run cut short still holds every method at its first seeds
    stages = dict(sorted(stages.items(), key=lambda kv: _seed_of(kv[0], prefix)))
    for count in grid.labels:
        scope = label_scope(count)
        for name, stage in stages.items():
            if not name.startswith(prefix) or not isinstance(stage, dict):
                continue
            own = stage.get("data") or data  # the template's own block (val_split, ...) if any
            block = {k: v for k, v in own.items() if k not in ("labels_per_class", "unlabeled")}
            if count != "all":
                block["labels_per_class"] = count
            label, _, seed = name[len(prefix) :].rpartition("-s")
            if False in grid.unlabeled or count == "all" or not _has_teacher(stage):
                out[f"{scope}.{name}"] = {**stage, "data": block}
            if True in grid.unlabeled and count != "all" and _has_teacher(stage):
                # the suffix tells the two variants apart; with [true] alone names stay plain
                suffix = UNLABELED_SUFFIX if False in grid.unlabeled else ""
                cell = f"{scope}.{prefix}{label}{suffix}-s{seed}"
                out[cell] = {**stage, "data": {**block, "unlabeled": "rest"}}
    return out


def _seed_of(name: str, prefix: str) -> int:
    seed = name.rpartition("-s")[2]
    return int(seed) if name.startswith(prefix) and seed.isdigit() else -1


def _has_teacher(stage: dict[str, Any]) -> bool:
    """Whether a cell's method reads a teacher (only those use unlabeled images)."""
    method = stage.get("method", "kd")
    method = {"name": method} if isinstance(method, str) else method
    parts = method.get("parts", []) if method.get("name") == "mix" else [method]
    names = [p.get("name", "") if isinstance(p, dict) else str(p) for p in parts]
    return any(n in METHODS and METHODS.get(n).uses_teacher for n in names)


def dataset_blocks(grid: GridConfig, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, data block) per ``grid.datasets`` entry: the pipeline's block plus the entry."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in grid.datasets:
        entry = {"dataset": entry} if isinstance(entry, str) else dict(entry)
        label = str(entry.pop("label", entry.get("dataset", data.get("dataset", "fashion-mnist"))))
        _check_label("datasets", label, dict(out))
        out.append((label, {**data, **entry}))
    return out


def _check_label(key: str, label: str, taken: dict[str, Any]) -> None:
    """Labels become parts of stage names: distinct, and letters, digits, - and _ only."""
    if label in taken:
        raise ConfigError(
            f"grid.{key}: two entries are labelled '{label}'; give each a distinct label"
        )
    if not label or not all(c.isalnum() or c in "-_" for c in label):
        raise ConfigError(f"grid.{key}: label '{label}' may hold letters, digits, - and _")


TEACHER_SWEEP = "teacher-"  # cell label prefix of the teacher-size sweep


def teacher_stages(grid: GridConfig, stages: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Per ``grid.teachers`` label: (teacher stage name, its stage block). Entries that change
    the template's teacher model get a copy of that stage named ``teacher-<label>``."""
    if not grid.teachers:
        return {}
    base_name = base_teacher(grid, stages)
    base = stages.get(base_name) if base_name else None
    if not isinstance(base, dict) or base.get("type") != "teacher":
        raise ConfigError(
            f"grid.teachers: the template '{grid.template}' does not distil from a teacher stage "
            "to vary; put a teacher stage before it"
        )
    base_model = base.get("model") or {}
    base_model = {"arch": base_model} if isinstance(base_model, str) else dict(base_model)
    out: dict[str, tuple[str, Any]] = {}
    for entry in grid.teachers:
        entry = {"arch": entry} if isinstance(entry, str) else dict(entry)
        label = str(entry.pop("label", entry.get("arch", base_model.get("arch", ""))))
        _check_label("teachers", label, out)
        model = {**base_model, **entry}
        if model == base_model:
            out[label] = (base_name, base)
        else:
            out[label] = (f"{base_name}-{label}", {**base, "model": model})
    return out


def base_teacher(grid: GridConfig, stages: dict[str, Any]) -> str | None:
    """The teacher stage the template distils from: its ``input``, its one ``teachers`` entry,
    or the last teacher stage before it."""
    template = stages[grid.template]
    listed = template.get("teachers")
    if isinstance(listed, list) and len(listed) > 1:
        raise ConfigError(
            "grid.teachers: the template distils from several teachers; a teacher-size sweep "
            "needs one (set the template's input to the teacher to vary)"
        )
    if template.get("input") or listed:
        return template.get("input") or listed[0]
    earlier = list(stages)[: list(stages).index(grid.template)]
    return next((n for n in reversed(earlier) if _is_teacher(stages[n])), None)


def _is_teacher(stage: Any) -> bool:
    return isinstance(stage, dict) and stage.get("type") == "teacher"


def sweep_method_block(grid: GridConfig, template: dict[str, Any]) -> dict[str, Any]:
    """The template's method block if it is sweep_method's, else sweep_method's defaults."""
    base = template.get("method", grid.sweep_method)
    base = dict(base) if isinstance(base, dict) and base.get("name") == grid.sweep_method else {}
    return {**base, "name": grid.sweep_method}


def cells(grid: GridConfig, template: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, method block) for every method and sweep value."""
    out: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for method in grid.methods:
        name = method if isinstance(method, str) else str(method.get("name", "method"))
        if isinstance(method, dict) and method.get("name") == "mix":
            name = "mix-" + "+".join(str(p.get("name", "?")) for p in method.get("parts", []))
        if isinstance(method, dict) and "label" in method:  # fitnets-h10 in a hint_weight sweep
            name = str(method["label"])
            method = {k: v for k, v in method.items() if k != "label"}
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}{seen[name]}", method))
    base = sweep_method_block(grid, template)
    out += [(f"T{_num(t)}", {**base, "temperature": t}) for t in grid.temperatures]
    out += [(f"a{_num(a)}", {**base, "alpha": a}) for a in grid.alphas]
    return out


def _num(value: float) -> str:
    return f"{value:g}"
