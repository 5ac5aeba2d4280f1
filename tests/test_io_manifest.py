"""Atomic writes, checksums and the manifest contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.io import atomic_path, write_json
from compress.manifest import Manifest


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path: Path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_manifest_round_trip_and_integrity(tmp_path: Path):
    artifact = tmp_path / "distill" / "model.pt"
    artifact.parent.mkdir()
    artifact.write_bytes(b"weights")
    manifest = Manifest(tmp_path, {})
    manifest.stages["distill"] = {
        "type": "distill", "status": "done", "config_hash": "abc",
        "metrics": {"top1": 0.9}, "artifacts": {"model": manifest.artifact_record(artifact)},
    }  # fmt: skip
    manifest.save()
    loaded = Manifest.load(tmp_path)
    assert loaded.stages["distill"]["artifacts"]["model"]["path"] == "distill/model.pt"
    assert loaded.stages["distill"]["metrics"]["top1"] == 0.9
    assert loaded.intact("distill")
    artifact.write_bytes(b"tamperd")  # same size, different bytes
    assert not loaded.intact("distill")


def test_write_json_is_valid_json(tmp_path: Path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert (tmp_path / "a.json").read_text().startswith("{")
