"""The pipeline file reference, generated from the config models so that it cannot drift.

Each block of the schema becomes one Markdown table (key, type, default, meaning): the global
settings, ``data``, the keys every stage has, each registered stage type, the training keys the
training stages share, nested blocks such as ``model``, and each registered distillation method.
``compress config-reference`` prints it (``--readme FILE`` rewrites the part of FILE between
two markers); the README says how to get it.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from compress.config.base import DataConfig, NameIn, StageConfig, TrainConfig
from compress.config.pipeline import GatesConfig, PipelineSettings
from compress.errors import CompressError
from compress.registry import METHODS, STAGES

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


@dataclass(frozen=True)
class KeyTable:
    """One table: the keys of ``model`` listed in ``keys``, under a heading."""

    title: str
    model: type[BaseModel]
    keys: list[str]
    intro: str
    path: str = ""  # where the keys sit in the file: "", "data.", "teacher."...

    @property
    def anchor(self) -> str:
        """GitHub's id for the heading, for links from the type column."""
        text = re.sub(r"[^\w\- ]", "", self.title.lower())
        return text.replace(" ", "-")


def blocks() -> list[KeyTable]:
    """Every table of the reference, in reading order."""
    stages = _pipeline_order(STAGES)
    training = [name for name, spec in stages if issubclass(spec.config, TrainConfig)]
    out = [
        KeyTable(
            "Global settings",
            PipelineSettings,
            list(PipelineSettings.model_fields),
            "Top-level keys of a pipeline file. Every other top-level key is a stage.",
        ),
        KeyTable(
            "`data`", DataConfig, list(DataConfig.model_fields), "Which images, and how.", "data."
        ),
        KeyTable(
            "`gates`",
            GatesConfig,
            list(GatesConfig.model_fields),
            "Optional pass/fail limits, checked after the stages (see [Gates](#gates)).",
            "gates.",
        ),
        KeyTable(
            "Keys every stage has",
            StageConfig,
            list(StageConfig.model_fields),
            "Stages run in file order; two stages of one type need distinct keys and `type:`.",
        ),
    ]
    shared = set(StageConfig.model_fields)
    for name, spec in stages:
        own = shared | (set(TrainConfig.model_fields) if name in training else set())
        extra = "; plus the [training keys](#training-keys)" if name in training else ""
        keys = [k for k in spec.config.model_fields if k not in own]
        intro = f"{spec.summary[:1].upper()}{spec.summary[1:]}{extra}."
        out.append(KeyTable(f"`{name}` stage", spec.config, keys, intro, f"{name}."))
    out.append(
        KeyTable(
            "Training keys",
            TrainConfig,
            list(TrainConfig.model_fields),
            f"Shared by every stage that trains: {', '.join(f'`{n}`' for n in training)}.",
        )
    )
    for name, spec in sorted(METHODS.items()):
        paper = f" Paper: {spec.paper}." if spec.paper.strip("- ") else ""
        out.append(
            KeyTable(
                f"`{name}` method",
                spec.params,
                [k for k in spec.params.model_fields if k != "name"],
                f"`distill.method: {name}`, or `{{name: {name}, ...}}` with the keys below: "
                f"{spec.summary}.{paper}",
                "distill.method.",
            )
        )
    return out + _nested_blocks(out)


def _pipeline_order(stages: Any) -> list[tuple[str, Any]]:
    """Stage types in the order a pipeline runs them: producers before their consumers.

    Registration order depends on import order, so ties (and cycles) go alphabetically to keep
    the generated text the same in every process.
    """
    pending = dict(sorted(stages.items()))
    ordered: list[tuple[str, Any]] = []
    made: set[str] = set()
    while pending:
        ready = [
            name
            for name, spec in pending.items()
            if all(k in made for k, req in spec.consumes(spec.config()).items() if req)
        ] or [next(iter(pending))]
        for name in ready:
            spec = pending.pop(name)
            ordered.append((name, spec))
            made.add(spec.produces)
    return ordered


def _nested_blocks(documented: list[KeyTable]) -> list[KeyTable]:
    """A block for each config model that other blocks nest (``model``...), with its users."""
    known = {b.model for b in documented}
    users: dict[type[BaseModel], list[str]] = {}
    for block in documented:
        for key in block.keys:
            for model in _models_in(block.model.model_fields[key].annotation):
                if model not in known:
                    users.setdefault(model, []).append(f"`{block.path}{key}`")
    return [
        KeyTable(
            f"`{_short_name(model)}` block",
            model,
            list(model.model_fields),
            f"Used by {', '.join(paths)}.",
        )
        for model, paths in users.items()
    ]


def _short_name(model: type[BaseModel]) -> str:
    return re.sub(r"(Config|Params)$", "", model.__name__).lower()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def reference_markdown() -> str:
    """The whole reference: one heading, intro line and table per block."""
    all_blocks = blocks()
    links = {b.model: b for b in all_blocks}
    lines = [
        "Generated from the config models by `compress config-reference` (`make docs` rewrites",
        "this section); a config key without a description fails the tests.",
    ]
    for block in all_blocks:
        lines += ["", f"### {block.title}", "", block.intro, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key in block.keys:
            info = block.model.model_fields[key]
            cells = [
                f"`{key}`",
                _type_text(info.annotation, links) + _bounds(info),
                _default_text(block.model, key, info),
                _meaning(block.model, key, info),
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Table-safe: a '|' would end the cell, a '<name>' would vanish as an HTML tag."""
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", text.replace("|", "\\|"))


def missing_descriptions() -> list[str]:
    """Keys the reference would show without a meaning: each is a test failure."""
    return [
        f"{block.title}: {key}"
        for block in blocks()
        for key in block.keys
        if not (block.model.model_fields[key].description or "").strip()
    ]


def _type_text(annotation: Any, links: dict[type[BaseModel], KeyTable]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0], links)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a, links) for a in present)
        return f"{text} or null" if len(present) < len(args) else text
    if origin is typing.Literal:
        return " / ".join(f"`{_value(a)}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0], links)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        block = links[annotation]
        return f"[{block.title}](#{block.anchor})"
    names = {int: "int", float: "float", bool: "bool", str: "string", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    limits = [
        f"{symbol} {_value(getattr(m, attr))}"
        for m in info.metadata
        for attr, symbol in _BOUNDS
        if getattr(m, attr, None) is not None
    ]
    return f", {', '.join(limits)}" if limits else ""


def _default_text(model: type[BaseModel], key: str, info: FieldInfo) -> str:
    if model is StageConfig and key == "type":
        return "the stage's key"
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        dumped = _set_fields(value)
        return f"`{_value(dumped)}`" if dumped else "its defaults"
    if isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
        value = [_set_fields(v) if isinstance(v, BaseModel) else v for v in value]
    return f"`{_value(value)}`"


def _set_fields(value: BaseModel) -> dict[str, Any]:
    """What a default factory set on a model, with its tag (name/type) first."""
    tag = {k: getattr(value, k) for k in ("name", "type") if k in type(value).model_fields}
    return {**tag, **value.model_dump(mode="json", exclude_unset=True)}


def _meaning(model: type[BaseModel], key: str, info: FieldInfo) -> str:
    text = (info.description or "").strip()
    registry = _registry_for(model, key)
    if registry is not None:
        text += f" ({', '.join(registry.names())})"
    return text


def _registry_for(model: type[BaseModel], key: str) -> Any:
    """The registry whose names a plain string field must be one of, to list them."""
    if model is StageConfig and key == "type":
        return STAGES
    info = model.model_fields[key]
    for marker in [*info.metadata, *_nested_metadata(info.annotation)]:
        if isinstance(marker, NameIn):
            return marker.registry
    return None


def _nested_metadata(annotation: Any) -> list[Any]:
    """Annotated metadata inside a type, e.g. the item type of ``list[registered(...)]``."""
    found = list(getattr(annotation, "__metadata__", ()))
    for arg in typing.get_args(annotation):
        found += _nested_metadata(arg)
    return found


def _value(value: Any) -> str:
    """A value as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    if isinstance(value, (dict, list)):
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000)
        return text.strip()
    return str(value)


def replace_block(text: str, reference: str) -> str:
    """``text`` (the README) with the part between the markers replaced by ``reference``."""
    if START not in text or END not in text:
        raise CompressError(f"the file has no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference}{END}{tail}"


def current_block(text: str) -> str:
    """The reference as it stands between the markers of ``text``."""
    if START not in text or END not in text:
        raise CompressError(f"the file has no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")
