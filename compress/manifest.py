"""The run directory's ``manifest.json``: the contract between stages and with other tools.

    {"pipeline": {...}, "versions": {...},
     "stages": {"<name>": {"type", "status", "config_hash", "inputs", "metrics",
                           "artifacts": {"<key>": {"path", "sha256", "bytes"}}, "seconds", ...}},
     "shelved": {"<name>": {...}}}

``stages`` describes the pipeline that last ran, in its order. ``shelved`` keeps the entries of
stages that run left out (a narrower ``--set grid...``, a stage removed from the file), so a
later run that has them again reuses them when their fingerprints still match.

Paths are relative to the run directory, so a run directory can be moved or copied whole.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from compress.io import sha256_file, write_json

MANIFEST = "manifest.json"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("compress", "torch", "torchvision", "onnx", "onnxruntime", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Manifest:
    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.data = data
        self.data.setdefault("stages", {})

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = run_dir / MANIFEST
        if path.is_file():
            return cls(run_dir, json.loads(path.read_text(encoding="utf-8")))
        return cls(run_dir, {})

    def save(self) -> None:
        write_json(self.run_dir / MANIFEST, self.data)

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data["stages"]

    def focus(self, names: list[str]) -> None:
        """Make ``stages`` hold exactly the pipeline's stages, in its order: entries of the
        others go to ``shelved`` (their folders stay), and a shelved entry comes back when its
        stage is in the pipeline again. Whether it is reused is still decided by its
        fingerprint and artifacts."""
        shelved = self.data.setdefault("shelved", {})
        every = {**shelved, **self.stages}
        self.data["stages"] = {n: every[n] for n in names if n in every}
        kept = set(self.data["stages"])
        self.data["shelved"] = {n: e for n, e in every.items() if n not in kept}
        if not self.data["shelved"]:
            del self.data["shelved"]

    def artifact_record(self, path: Path) -> dict[str, Any]:
        return {
            "path": path.relative_to(self.run_dir).as_posix(),
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }

    def intact(self, stage: str) -> bool:
        """Done, and every artifact still on disk with the recorded checksum."""
        entry = self.stages.get(stage, {})
        if entry.get("status") != "done":
            return False
        for record in entry.get("artifacts", {}).values():
            path = self.run_dir / record["path"]
            if not path.is_file() or path.stat().st_size != record["bytes"]:
                return False
            if sha256_file(path) != record["sha256"]:
                return False
        return True
