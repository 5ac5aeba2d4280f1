"""Where a figure was measured: CPU model and ISA flags, cores, threads, GPU, library versions.
Every latency we publish carries it (the bench stage's metrics, ``compress bench --json``)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from compress.manifest import library_versions


def environment(threads: int | None) -> dict[str, Any]:
    """CPU model and ISA flags, cores and threads, GPU and driver, library versions."""
    import onnxruntime as ort  # here: the runner records host() without loading onnxruntime

    env: dict[str, Any] = {
        **host(threads),
        "onnxruntime_providers": ort.get_available_providers(),
        "versions": library_versions(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["gpu_driver"] = _nvidia_driver()
    return env


def host(threads: int | None = None) -> dict[str, Any]:
    """CPU model, the ISA flags that decide our kernels' speed, cores and torch threads: what
    every published time (a stage's seconds included) needs beside it."""
    flags: set[str] = set()
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isa = [
        f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags
    ]
    facts: dict[str, Any] = {
        "cpu": model or platform.processor() or platform.machine(),
        "isa": isa,
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def _nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
