"""Atomic writes, hashing and safe checkpoint loading.

Every artifact goes through a temp file in the same folder plus ``os.replace`` so a killed run
never leaves half a file, and every checkpoint is read with ``weights_only=True`` so a file from
the internet cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from compress.errors import CheckpointError, DiskFullError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (waits for it): processes that would compute
    the same file (parallel jobs) take turns, and the later ones find it written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; move it into place only if the block succeeds.

    A full disk (or quota) while writing is one clear error; the temp file is removed and
    the previous ``path``, if any, is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        if not _no_space(exc):
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        raise DiskFullError(
            f"no space left on device writing {path}; {kept}. Free some space (or point "
            "--run-dir elsewhere) and run the same command again to continue"
        ) from exc
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _no_space(exc: BaseException) -> bool:
    # torch.save reports a failed write as a RuntimeError ("file write failed")
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE
    return "file write failed" in str(exc) or "No space left" in str(exc)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_torch(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path) -> Any:
    """Load a checkpoint without unpickling code; a crafted pickle is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot load {path} safely (weights_only=True): {first}. "
            "Only plain tensors and containers are accepted; re-save the weights with "
            "torch.save(model.state_dict(), path)."
        ) from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
