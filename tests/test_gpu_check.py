"""benchmarks/gpu_check.py: one line and exit 0 without a GPU; its tiny CPU mode runs every part."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT, requires_fashion

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path: Path):
    done = _run("--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device on this machine; nothing checked"
    ]
    assert not (tmp_path / "out").exists()


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_out_of_time_it_skips_the_parts_left_and_still_writes_the_report(tmp_path: Path):
    out = tmp_path / "out"
    done = _run("--device", "cpu", "--tiny", "--seconds", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    for part in ("tests", "quickstart", "bench", "int8", "compiled"):
        assert report[part]["skipped"] == "out of time (--seconds 0)", report[part]
    assert report["goals"] == {}
    markdown = (out / "gpu_check.md").read_text()
    assert "quickstart: out of time" in markdown and "- none measured" in markdown
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]


def test_a_failed_bf16_variant_keeps_the_fp32_figures_in_the_report():
    gpu_check = _module()
    fp32 = {"seconds": 9.0, "teacher_images_per_s": 900.0, "distill_images_per_s": 1200.0,
            "teacher_top1": 0.9, "student_top1": 0.88, "student_onnx_top1": 0.88}  # fmt: skip
    report = {
        "environment": {"versions": {"torch": "2.x"}, "cpu": "a CPU"}, "tiny": True,
        "tests": {"skipped": "--skip-tests"},
        "quickstart": {"fp32": fp32, "bf16+channels_last": {"error": "compress run exit 1: NaN"}},
    }  # fmt: skip
    report["goals"] = gpu_check.goals(report)
    assert report["goals"] == {}  # no ratio from one side
    markdown = gpu_check.render(report)
    assert "| fp32 | 900 | 1,200 | 0.9000 | 0.8800 | 0.88 | 9.0 |" in markdown
    assert "- bf16+channels_last: compress run exit 1: NaN" in markdown
    assert "bench: not run" in markdown and "INT8: not run" in markdown


def test_the_bf16_goals_do_not_wait_for_the_compiled_part():
    gpu_check = _module()
    fp32 = {"teacher_images_per_s": 900.0, "distill_images_per_s": 1200.0, "student_top1": 0.88}
    bf16 = {"teacher_images_per_s": 1800.0, "distill_images_per_s": 1500.0, "student_top1": 0.877}
    report = {"quickstart": {"fp32": fp32, "bf16+channels_last": bf16},
              "compiled": {"skipped": "out of time (--seconds 480)"}}  # fmt: skip
    assert gpu_check.goals(report) == {
        "teacher_bf16_speedup (>= 2)": 2.0, "distill_bf16_speedup (>= 2)": 1.25,
        "bf16_minus_fp32_student_top1 (>= -0.005)": -0.003,
    }  # fmt: skip
    report["compiled"] = {"bf16+channels_last+compile": {**bf16, "teacher_images_per_s": 2700.0}}
    assert gpu_check.goals(report)["teacher_bf16_compile_speedup (>= 2)"] == 3.0


def test_a_failed_or_unfinished_bench_keeps_what_was_measured():
    gpu_check = _module()
    timed = {"32": {"p50": 1.0, "p90": 1.1, "p99": 1.2, "throughput": 3000.0}}
    bench = {"student/torch": timed, "teacher/torch": {"32": {**timed["32"], "throughput": 900.0}},
             "student/torch-cudagraph": {"error": "compress bench exit 1: graph capture"},
             "teacher/torch-cudagraph": timed,
             "stopped": "out of time before student/torch-compile was measured"}  # fmt: skip
    bench = gpu_check._with_speedups(bench, ("torch", "torch-cudagraph", "torch-compile"))
    assert bench["student_speedup/torch"] == {"32": 3.33}
    assert "student_speedup/torch-cudagraph" not in bench
    report = {"environment": {"versions": {"torch": "2.x"}, "cpu": "a CPU"}, "tiny": False,
              "quickstart": {"skipped": "--skip"}, "bench": bench}  # fmt: skip
    report["goals"] = gpu_check.goals(report)
    assert report["goals"] == {}  # no batch 256, and no timed compile or graph run at batch 32
    markdown = gpu_check.render(report)
    assert "| student/torch | 32 | 1.000 | 1.100 | 1.200 | 3,000 |" in markdown
    assert "- student/torch-cudagraph: compress bench exit 1: graph capture" in markdown
    assert "- out of time before student/torch-compile was measured" in markdown


def test_the_tests_part_counts_what_pytest_reports_and_keeps_its_output_when_stopped():
    gpu_check = _module()
    args = SimpleNamespace(time_left=lambda: 300.0)
    done = gpu_check.gpu_tests(args)  # here every CUDA test skips
    assert done["exit_code"] == 0 and done["failures"] == []
    assert done["skipped"] >= 10 and "skipped" in done["summary"]
    stopped = gpu_check.gpu_tests(SimpleNamespace(time_left=lambda: 0.3))
    assert stopped["error"] == "stopped after 0 s" and "output_tail" in stopped


def test_a_stopped_part_takes_what_it_started_with_it():
    """A grandchild (a compile worker, a data loader) holding the output pipe must not keep
    the check waiting past its time."""
    gpu_check = _module()
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('started', flush=True); time.sleep(60)")  # fmt: skip
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        gpu_check.run_within([sys.executable, "-c", script], 2.0)
    assert time.monotonic() - started < 30
    assert "started" in stopped.value.stdout


@pytest.mark.e2e
@requires_fashion
@pytest.mark.skipif(
    os.environ.get("COMPRESS_SLOW_TESTS") != "1",
    reason="several minutes on 2 cores (every part of the GPU check on CPU); COMPRESS_SLOW_TESTS=1",
)
def test_tiny_cpu_mode_runs_every_part_and_writes_json_and_markdown(tmp_path: Path):
    out = tmp_path / "out"
    done = _run("--device", "cpu", "--tiny", "--skip-tests", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    for part in ("quickstart", "bench", "int8", "compiled"):
        assert "error" not in report[part], report[part]
    runs = {**report["quickstart"], **report["compiled"]}
    for variant in ("fp32", "bf16+channels_last", "bf16+channels_last+compile"):
        run = runs[variant]
        assert "error" not in run, f"{variant}: {run['error']}"
        assert run["teacher_images_per_s"] > 0 and run["distill_images_per_s"] > 0
        assert 0.0 <= run["student_top1"] <= 1.0 and run["student_onnx_top1"] is not None
    assert set(report["bench"]["student/torch-compile"]) == {"1", "4"}
    assert (
        report["bench"]["student/torch"]["4"]["p99"] >= report["bench"]["student/torch"]["4"]["p50"]
    )
    assert 0.0 <= report["int8"]["int8_onnx_top1_onnxruntime_cpu"] <= 1.0
    returned = out / report["int8"]["int8_onnx_file"]["name"]  # the artifact comes back
    assert (
        hashlib.sha256(returned.read_bytes()).hexdigest()
        == (report["int8"]["int8_onnx_file"]["sha256"])
    )
    assert report["int8"]["teacher_and_student_reused"]
    # the device brings back at most 8 files from $OUT: the run folders must stay elsewhere
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json", "gpu_check.md", "int8_student.onnx"
    ]  # fmt: skip
    assert "teacher_bf16_speedup (>= 2)" in report["goals"]
    assert "distill_bf16_compile_speedup (>= 2)" in report["goals"]
    markdown = (out / "gpu_check.md").read_text()
    assert "| bf16+channels_last |" in markdown and "| bf16+channels_last+compile |" in markdown
