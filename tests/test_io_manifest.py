"""Atomic writes, checksums and the manifest contract."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.errors import DiskFullError
from compress.io import atomic_path, save_torch, write_json
from compress.manifest import Manifest
from tests.conftest import ROOT


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


def disk_full_after_half(obj, f):
    Path(f).write_bytes(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def torch_disk_full(obj, f):
    raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed "
                       "writing file data/0: file write failed")  # fmt: skip


@pytest.mark.parametrize("failing_save", [disk_full_after_half, torch_disk_full])
def test_disk_full_keeps_the_previous_checkpoint_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_save
):
    target = tmp_path / "checkpoint.pt"
    save_torch({"epoch": 1}, target)
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*checkpoint\.pt; "
                       r"the previous checkpoint\.pt is intact"):  # fmt: skip
        save_torch({"epoch": 2}, target)
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_other_write_errors_are_not_called_disk_full(tmp_path: Path):
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x.json"):
        raise PermissionError(errno.EACCES, "Permission denied")


DISK_FULL_CLI = """
import errno, pathlib, sys
def full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
pathlib.Path.write_text = full
sys.argv = ["compress", "config-reference", "--readme", sys.argv[1]]
from compress.cli import main
main()
"""


def test_disk_full_is_one_line_and_exit_2_on_the_command_line(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\n"
    )
    before = readme.read_text()
    env = {**os.environ, "COLUMNS": "300"}
    argv = [sys.executable, "-c", DISK_FULL_CLI, str(readme)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing")
    assert "README.md is intact" in lines[0] and "Traceback" not in done.stderr
    assert readme.read_text() == before and list(tmp_path.iterdir()) == [readme]
