"""``python:<module or path/file.py>:<callable>``: the user's own factory, called with the
model block's ``kwargs``. Loading a model file built this way runs that factory again: it is
the user's code, named by their config.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from compress.errors import CompressError, did_you_mean
from compress.models.sources import SOURCES, is_weights_file
from compress.models.weights import check_weights_path


def parse(name: str) -> tuple[str, str]:
    module, sep, attr = name.rpartition(":")
    if not sep or not module or not attr:
        raise ValueError(
            f"python:{name}: write python:MODULE:FACTORY or python:path/to/file.py:FACTORY"
        )
    return module, attr


def import_module(module: str) -> ModuleType:
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise ValueError(f"python: no such file: {module}")
        key = f"compress_user_{abs(hash(str(path)))}"
        if key in sys.modules:
            return sys.modules[key]
        spec = importlib.util.spec_from_file_location(key, path)
        loaded = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[key] = loaded
        try:
            spec.loader.exec_module(loaded)  # type: ignore[union-attr]
        except Exception as exc:
            del sys.modules[key]
            message = f"python: importing {module} failed: {type(exc).__name__}: {exc}"
            raise ValueError(message) from None
        return loaded
    try:
        return importlib.import_module(module)
    except Exception as exc:
        message = f"python: cannot import module '{module}': {type(exc).__name__}: {exc}"
        raise ValueError(message) from None


def factory(name: str) -> Any:
    module_name, attr = parse(name)
    module = import_module(module_name)
    if not callable(getattr(module, attr, None)):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise ValueError(
            f"python: {module_name} has no callable '{attr}'{did_you_mean(attr, public)}"
        )
    return getattr(module, attr)


def canonical(name: str) -> str:
    """A file factory by absolute path, so later stages (other folders) rebuild the same."""
    module, attr = parse(name)
    if module.endswith(".py"):
        module = str(Path(module).resolve())
    return f"{module}:{attr}"


class PythonSource:
    adapts = True

    def canonical(self, name: str) -> str:
        return f"python:{canonical(name)}"

    def check_weights(self, name: str, kwargs: dict[str, Any], weights: str) -> None:
        if not is_weights_file(weights):
            raise ValueError(f"weights '{weights}': python:{name} takes a state_dict file path")
        check_weights_path(self, "python", name, kwargs, weights)

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        """Imports the factory and calls it once: the object must be an nn.Module."""
        try:
            self.build(name, kwargs, None)
        except CompressError as exc:
            raise ValueError(str(exc)) from None

    def build(self, name: str, kwargs: dict[str, Any], pretrained: Any) -> nn.Module:
        try:
            model = factory(name)(**kwargs)
        except ValueError as exc:
            raise CompressError(str(exc)) from exc
        except TypeError as exc:
            raise CompressError(f"python:{name}(**kwargs) failed: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise CompressError(
                f"python:{name} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model


SOURCES.register("python")(PythonSource())
