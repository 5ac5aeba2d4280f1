"""``jobs: N``: stages trained side by side in worker processes, recorded as one process would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_cli


def grid(fashion_root: Path, **extra) -> dict:
    return {
        "name": "jobs",
        "threads": 1,
        "data": {"dataset": "fashion-mnist", "root": str(fashion_root), "download": False,
                 "image_size": 16, "channels": 1, "batch_size": 16},
        "teacher": {"model": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none"},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none", "method": "kd"},
        "grid": {"seeds": [0, 1], "methods": ["baseline", "kd"]},
        **extra,
    }  # fmt: skip


def run(pipeline: dict, tmp_path: Path, run_dir: str, *args: str):
    path = tmp_path / f"{run_dir}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    result = run_cli("run", str(path), "--run-dir", str(tmp_path / run_dir), *args)
    manifest = tmp_path / run_dir / "manifest.json"
    stages = json.loads(manifest.read_text())["stages"] if manifest.exists() else {}
    return result, stages


def test_parallel_jobs_train_the_same_weights_as_one_process(fake_fashion, tmp_path: Path):
    one, alone = run(grid(fake_fashion), tmp_path, "one")
    two, side_by_side = run(grid(fake_fashion, jobs=2), tmp_path, "two")
    assert one.returncode == 0 and two.returncode == 0, two.stdout + two.stderr
    assert "2 jobs of 1 thread(s) each" in two.stdout
    assert list(side_by_side) == list(alone)  # pipeline order, however they finished
    assert side_by_side["teacher"]["config_hash"] == alone["teacher"]["config_hash"]
    for name, entry in alone.items():
        assert side_by_side[name]["status"] == "done"
        assert side_by_side[name]["host"]["threads"] == 1  # each job, as threads says
        assert side_by_side[name]["metrics"]["top1"] == entry["metrics"]["top1"], name
        weights = [
            torch.load(tmp_path / run_dir / name / "model.pt", weights_only=True)["state_dict"]
            for run_dir in ("one", "two")
        ]  # the files differ in their recorded timings only
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), name
    again, _ = run(grid(fake_fashion, jobs=2), tmp_path, "two")
    assert again.returncode == 0
    assert again.stdout.count("unchanged, skipped") == len(alone)


def test_a_failing_job_is_recorded_and_the_others_finish(fake_fashion, tmp_path: Path):
    pipeline = grid(fake_fashion, jobs=2)
    del pipeline["grid"]
    pipeline["broken"] = {
        "type": "distill", "student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
        "augment": "none", "method": "kd", "input": "teacher",
        "data": {**pipeline["data"], "root": str(tmp_path / "nowhere")},
    }  # fmt: skip
    result, stages = run(pipeline, tmp_path, "run")
    out = result.stdout + result.stderr
    assert result.returncode == 2, out  # the CLI's exit status for a user's mistake
    assert "Traceback" not in out
    assert out.count("dataset 'fashion-mnist' not found") == 1  # the worker's error, once
    assert stages["broken"]["status"] == "failed"
    assert stages["distill"]["status"] == "done"  # started beside it, left to finish


def _workers_of(parent: int) -> list[int]:
    """The pids of ``parent``'s multiprocessing workers (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _start_long_grid(fake_fashion: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path, list]:
    """A 2-job grid whose cells train long enough to be stopped; returns once both run."""
    pipeline = grid(fake_fashion, jobs=2)
    pipeline["distill"]["epochs"] = 2000
    pipeline["grid"]["methods"] = ["kd"]
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    manifest = tmp_path / "long" / "manifest.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "compress", "run", str(path), "--run-dir", str(tmp_path / "long")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        stages = json.loads(manifest.read_text())["stages"] if manifest.exists() else {}
        cells = [e for n, e in stages.items() if n.startswith("distill-")]
        workers = _workers_of(process.pid)
        if len(cells) == 2 and all(e["status"] == "running" for e in cells) and workers:
            return process, manifest, workers
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"the cells never ran side by side: {process.communicate()[0]}")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigterm_stops_the_workers_and_records_the_cells_interrupted(fake_fashion, tmp_path):
    process, manifest, workers = _start_long_grid(fake_fashion, tmp_path)
    process.send_signal(signal.SIGTERM)  # what kill and job schedulers send
    out = process.communicate(timeout=120)[0]
    assert process.returncode == 143, out
    assert "terminated: run the same command again to resume" in out
    assert "Traceback" not in out
    stages = json.loads(manifest.read_text())["stages"]
    assert {stages[n]["status"] for n in stages if n.startswith("distill-")} == {"interrupted"}
    assert not [pid for pid in workers if _alive(pid)]


@pytest.mark.skipif(sys.platform != "linux", reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_workers_stop_when_their_parent_is_killed_outright(fake_fashion, tmp_path):
    process, _, workers = _start_long_grid(fake_fashion, tmp_path)
    process.kill()  # SIGKILL: the parent runs no cleanup at all
    process.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]
