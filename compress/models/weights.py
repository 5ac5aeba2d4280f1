"""Users' weights files: finding the state_dict inside, and checking it fits an architecture.

Loaded with ``weights_only=True`` (compress.io): a file from the internet never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compress.errors import CheckpointError, CompressError
from compress.io import load_torch
from compress.models.adapt import first_conv, head

FORMAT = "compress.model/1"


def extract_state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state_dict in a user's checkpoint, whatever common wrapper it comes in."""
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        payload = payload["state_dict"]
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise CheckpointError(f"{path} holds no state_dict (a dict of parameter name -> tensor)")
    prefix = "module."
    if all(k.startswith(prefix) for k in payload):
        payload = {k[len(prefix) :]: v for k, v in payload.items()}
    return payload


def state_mismatch(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and mis-shaped keys (``skip``: prefixes whose shapes may
    differ, e.g. a head that is replaced after loading)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape and not (skip and k.startswith(skip))
    ]
    return missing, unexpected, wrong


def check_weights_file(
    source: Any, arch: str, name: str, kwargs: dict[str, Any], path: Path
) -> None:
    """A weights file must be of this architecture: the library's layout (any head and first
    conv: they are adapted after loading) with the same keys and body shapes; else one line."""
    try:
        state = extract_state_dict(load_torch(path), path)
    except CompressError as exc:
        raise ValueError(str(exc)) from None
    model = source.build(name, kwargs, None)
    adapted = {f"{head(model)[0]}.", f"{first_conv(model)[0]}."}
    missing, unexpected, wrong = state_mismatch(model.state_dict(), state, skip=tuple(adapted))
    if missing or unexpected or wrong:
        shown = (missing + unexpected + wrong)[:3]
        raise ValueError(
            f"weights {path} do not fit {arch}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} mis-shaped keys (e.g. {', '.join(shown)}); is it a "
            "checkpoint of another architecture?"
        )


def check_weights_path(
    source: Any, prefix: str, name: str, kwargs: dict[str, Any], weights: str
) -> None:
    """A state_dict file must exist and, for library models, fit the architecture's layout."""
    if not Path(weights).is_file():
        raise ValueError(f"weights file not found: {weights}")
    if prefix != "builtin":  # built-ins: checked against the adapted model when built
        check_weights_file(source, f"{prefix}:{name}", name, kwargs, Path(weights))
