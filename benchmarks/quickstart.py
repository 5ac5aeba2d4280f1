"""Time the quickstart pipeline from scratch and report its accuracies against the targets.

    .venv/bin/python benchmarks/quickstart.py [--pipeline pipelines/quickstart.yaml]

Runs ``compress run`` in a fresh run directory (nothing reused), then a second time to show the
skip path, and prints wall-clock seconds per stage and the test-set accuracies. A measurement,
not a test: it reports how the numbers compare with the targets and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"teacher top-1": 0.87, "student top-1": 0.85}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/quickstart.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compress-quickstart-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "compress",
            "run",
            args.pipeline,
            "--run-dir",
            str(run_dir),
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        first = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        second = time.perf_counter() - start
        manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    print("\nstage seconds: " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in stages.items()))
    print(f"first run: {first:.0f} s wall clock; re-run (all skipped): {second:.1f} s")
    bench = stages["bench"]["metrics"]
    found = {
        "teacher top-1": stages["teacher"]["metrics"]["top1"],
        "student top-1": stages["distill"]["metrics"]["top1"],
        "student ONNX top-1": bench["top1"],
    }
    for name, value in found.items():
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            met = "met" if value >= target else "MISSED"
            verdict = f" (target >= {100 * target:.0f}%: {met})"
        print(f"{name}: {100 * value:.2f}%{verdict}")
    delta = 100 * (bench["top1"] - stages["distill"]["metrics"]["top1"])
    print(f"ONNX vs PyTorch student: {delta:+.2f} points (target within 0.1)")
    print(f"10-minute budget: {'met' if first < 600 else 'MISSED'} ({first / 60:.1f} min)")


if __name__ == "__main__":
    main()
