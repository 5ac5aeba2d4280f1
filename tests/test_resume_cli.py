"""A run killed with SIGKILL mid-training resumes from its checkpoint and ends with the same
metrics as a run that never stopped (CPU, deterministic mode)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, requires_fashion

PIPELINE = {
    "name": "resume",
    "deterministic": True,
    "threads": 1,
    "data": {"dataset": "fashion-mnist", "train_subset": 1024, "test_subset": 256,
             "image_size": 16, "batch_size": 32},
    "teacher": {"model": {"arch": "resnet18", "stem": "compact"}, "epochs": 1, "lr": 0.05,
                "augment": "none"},
    "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 2,
                "lr": 0.05, "augment": "standard", "checkpoint_every_steps": 4,
                "method": {"name": "kd", "temperature": 4.0, "alpha": 0.5}},
}  # fmt: skip
# the same kill/resume, in the quantization-aware fine-tuning after a short distillation
QAT_PIPELINE = {
    **PIPELINE,
    "name": "resume_qat",
    "distill": {**PIPELINE["distill"], "epochs": 1, "checkpoint_every_steps": None},
    "qat": {"epochs": 2, "lr": 0.01, "augment": "standard", "checkpoint_every_steps": 4,
            "calibration_images": 128, "method": {"name": "kd", "temperature": 4.0}},
}  # fmt: skip


def run(pipeline: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "compress", "run", str(pipeline), "--run-dir", str(run_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip


def stage_metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][stage]["metrics"]


@pytest.mark.e2e
@requires_fashion
@pytest.mark.parametrize(("stage", "raw"), [("distill", PIPELINE), ("qat", QAT_PIPELINE)])
def test_kill_9_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path: Path, stage, raw):
    pipeline = tmp_path / "resume.yaml"
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))

    straight = run(pipeline, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    victim = run(pipeline, tmp_path / "killed")
    checkpoint = tmp_path / "killed" / stage / "checkpoint.pt"
    deadline = time.time() + 600
    while not checkpoint.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    resumed = run(pipeline, tmp_path / "killed")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "teacher: unchanged, skipped" in output
    assert re.search(rf"resuming {stage} .*from epoch \d, step \d+", output), output
    killed, straight_metrics = (
        stage_metrics(tmp_path / "killed", stage),
        stage_metrics(tmp_path / "straight", stage),
    )
    assert (killed["top1"], killed["top5"]) == (straight_metrics["top1"], straight_metrics["top5"])
    assert epoch_losses(tmp_path / "killed", stage) == epoch_losses(tmp_path / "straight", stage)


def epoch_losses(run_dir: Path, stage: str) -> list[tuple[float, float]]:
    history = json.loads((run_dir / stage / "history.json").read_text())
    return [(h["loss"], h["train_top1"]) for h in history]
