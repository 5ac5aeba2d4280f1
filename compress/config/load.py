"""Read a pipeline file, apply ``--set`` overrides, validate, and explain every error in one line.

Errors name the key as the user wrote it (``distill.method.temperature``), say what is wrong,
and for an unknown key suggest the closest valid one.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compress.config.grid import expand_grid
from compress.config.pipeline import PipelineSettings, global_keys, pipeline_model, stage_types
from compress.errors import ConfigError, did_you_mean


def load_pipeline(path: Path, overrides: list[str] | None = None) -> PipelineSettings:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    return parse_pipeline(raw, overrides, source=str(path))


def parse_pipeline(
    raw: Any, overrides: list[str] | None = None, source: str = "pipeline"
) -> PipelineSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (name, data, stages...)")
    for override in overrides or []:
        apply_override(raw, override)
    model = pipeline_model()
    try:
        return model.model_validate(expand_grid(split_stages(raw)))
    except ValidationError as exc:
        raise ConfigError("\n".join(format_errors(exc, model, raw))) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """``a.b.c=value``: value parsed as YAML (numbers, booleans, lists); creates missing maps."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. distill.epochs=1), got '{override}'")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        child = _child(node, part)
        if child is None or isinstance(child, str):
            # a string stands for {name: string} (``method: kd``); nothing yet: a new mapping
            child = {"name": child} if isinstance(child, str) else {}
            _assign(node, part, child, ".".join(parts[: depth + 1]))
        if not isinstance(child, dict | list):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: depth + 1])}' is not a mapping")
        node = child
    _assign(node, parts[-1], value, key)


def _child(node: Any, part: str) -> Any:
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part)


def _assign(node: Any, part: str, value: Any, where: str) -> None:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"--set {where}: index out of range (list has {len(node)} items)")
        node[int(part)] = value
    else:
        node[part] = value


def split_stages(raw: dict[str, Any]) -> dict[str, Any]:
    """Move top-level stage keys under ``stages``, giving each its default type."""
    globals_, types_ = global_keys(), stage_types()
    out: dict[str, Any] = {"stages": {}}
    for key, value in raw.items():
        if key in globals_:
            out[key] = value
            continue
        if isinstance(value, dict) and "type" in value:
            out["stages"][key] = value
        elif key in types_:
            out["stages"][key] = (
                {"type": key, **(value or {})} if isinstance(value, dict | type(None)) else value
            )
        else:
            hint = did_you_mean(key, globals_ + types_)
            raise ConfigError(
                f"unknown key '{key}'{hint}; top-level keys are settings "
                f"({', '.join(globals_)}) or stages ({', '.join(types_)})"
            )
    return out


# ---------------------------------------------------------------------------- error messages


def format_errors(exc: ValidationError, model: type[BaseModel], raw: dict[str, Any]) -> list[str]:
    messages = []
    for error in exc.errors():
        path, fields = _walk(model, error["loc"])
        shown = ".".join(str(p) for p in path) or "pipeline"
        kind = error["type"]
        if kind == "extra_forbidden":
            hint = did_you_mean(str(path[-1]), fields) if fields else ""
            valid = f"; valid keys here: {', '.join(fields)}" if fields else ""
            messages.append(f"unknown key '{shown}'{hint}{valid}")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            messages.append(f"{shown}: {_tag_message(error)}")
        elif kind == "missing":
            messages.append(f"{shown}: required key is missing")
        else:
            got = error.get("input")
            got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
            messages.append(f"{shown}: {_clean(error['msg'])}{got_text}")
    return list(dict.fromkeys(messages))


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _tag_message(error: dict[str, Any]) -> str:
    ctx = error.get("ctx", {})
    tag = ctx.get("tag")
    expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
    field = ctx.get("discriminator", "'type'").strip("'")
    if tag is None:
        return f"'{field}' is missing; valid: {', '.join(expected)}"
    return f"unknown {field} '{tag}'{did_you_mean(tag, expected)}; valid: {', '.join(expected)}"


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[Any], list[str]]:
    """Follow an error location through the config models.

    Returns the path as the user wrote it (no ``stages`` prefix, no union tags) and the valid
    keys of the model the last segment sits in (for suggestions).
    """
    path: list[Any] = []
    current: Any = model
    fields: list[str] = []
    for index, seg in enumerate(loc):
        current = _unwrap(current)
        if isinstance(current, list):  # a tagged union: this segment is the tag
            current = next((m for m in current if _tag_of(m) == seg), None)
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = list(current.model_fields)
            if index == 0 and seg == "stages":
                current = current.model_fields["stages"].annotation
                continue
            path.append(seg)
            current = current.model_fields[seg].annotation if seg in current.model_fields else None
            continue
        origin = typing.get_origin(current)
        if origin in (dict, list):
            path.append(seg)
            current = typing.get_args(current)[-1]
            continue
        path.append(seg)
        current = None
    return path, fields


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated; a union of models becomes a list of candidates."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(models) > 1:
                return models
            annotation = models[0] if models else args[0]
            continue
        return annotation


def _tag_of(model: type[BaseModel]) -> str | None:
    for key in ("type", "name"):
        field = model.model_fields.get(key)
        if field is not None and isinstance(field.default, str):
            return field.default
    return None
