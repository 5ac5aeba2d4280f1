"""Bench the quickstart's models side by side in one process and print ratios to the teacher.

    .venv/bin/python benchmarks/bench_quickstart.py [--run-dir runs/quickstart] [--min-seconds 3]

Reads the run's manifest and times every model file it lists: the teacher and the student
(model.pt, PyTorch eager), the exported ONNX file (onnxruntime) and, when a later stage wrote one,
an int8 ONNX file (any other .onnx artifact). Same process, same machine state, same timing plan
as ``compress bench``, batch sizes 1 and 32. A measurement, not a test: it never fails on the
numbers. Accuracies are the ones the run measured on the full test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from compress.bench.backends import BackendOptions, default_backend, load_runner
from compress.bench.environment import environment
from compress.bench.facts import model_facts
from compress.bench.standalone import describe_artifact
from compress.bench.timing import TimingPlan, summarize

BATCH_SIZES = (1, 32)


def artifacts(run_dir: Path) -> list[tuple[str, Path, float | None]]:
    """(name, path, test top-1) of every model file in the run, in pipeline order."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    onnx_top1: dict[tuple[str, str], float | None] = {}
    for entry in manifest["stages"].values():
        if entry["type"] == "bench" and entry.get("status") == "done":
            stage, metrics = entry["inputs"]["onnx"]["stage"], entry["metrics"]
            onnx_top1[(stage, "onnx")] = metrics.get("top1")
            onnx_top1[(stage, "onnx_fp32")] = metrics.get("fp32_onnx_top1")
    found = []
    for stage, entry in manifest["stages"].items():
        if entry.get("status") != "done":
            continue
        for key, record in entry.get("artifacts", {}).items():
            path = run_dir / record["path"]
            if path.suffix not in (".pt", ".onnx") or not record["path"].startswith(f"{stage}/"):
                continue  # not a model, or another stage's file (float_model, source_model)
            top1 = entry.get("metrics", {}).get("top1", onnx_top1.get((stage, key)))
            kind = "PyTorch eager" if path.suffix == ".pt" else "ONNX, onnxruntime"
            if key == "onnx_fp32" or (key == "onnx" and "runtime_ops" in entry.get("metrics", {})):
                kind += ", FP32" if key == "onnx_fp32" else ", INT8"
            found.append((f"{stage} ({kind})", path, top1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not (args.run_dir / "manifest.json").is_file():
        sys.exit(f"{args.run_dir} has no manifest.json: run `make run` first")
    plan = TimingPlan(min_seconds=args.min_seconds)
    options = BackendOptions(threads=args.threads)
    rows = []
    for name, path, top1 in artifacts(args.run_dir):
        _, channels, height, width = describe_artifact(path)["shape"]
        runner = load_runner(default_backend(path), path, options)
        latency = {}
        for bs in BATCH_SIZES:
            batch = np.random.default_rng(0).standard_normal((bs, channels, height, width))
            latency[bs] = summarize(runner.time(batch.astype(np.float32), plan), bs)
        rows.append((name, top1, model_facts(path), latency))
        print(f"timed {name}", file=sys.stderr)

    env = environment(args.threads)
    print(f"{env['cpu']} ({', '.join(env['isa'])}), {env['cores']} cores, {env['threads']} threads")
    print(f"timing plan: >= {plan.min_iterations} calls and >= {plan.min_seconds:g} s per batch "
          f"size (at most {plan.max_seconds:g} s)\n")  # fmt: skip
    header = (f"{'model':<30} {'top-1':>7} {'MACs':>7} {'size':>8}"
              + "".join(f" {'b=' + str(bs) + ' p50/p99 ms':>20}" for bs in BATCH_SIZES)
              + f" {'b=32 img/s':>11}")  # fmt: skip
    print(header)
    for name, top1, facts, latency in rows:
        acc = "-" if top1 is None else f"{100 * top1:.2f}%"
        line = f"{name:<30} {acc:>7} {facts['macs'] / 1e6:>6.1f}M {facts['bytes'] / 1e6:>5.1f} MB"
        for bs in BATCH_SIZES:
            line += f" {latency[bs]['p50']:>9.3f} / {latency[bs]['p99']:>7.3f}"
        print(line + f" {latency[32]['throughput']:>11,.0f}")

    teacher = rows[0]
    print(f"\nagainst {teacher[0]}:")
    for name, top1, facts, latency in rows[1:]:
        speed = ", ".join(
            f"batch {bs} {teacher[3][bs]['p50'] / latency[bs]['p50']:.1f}x faster (p50)"
            for bs in BATCH_SIZES
        )
        known = top1 is not None and teacher[1] is not None
        delta = f"{100 * (top1 - teacher[1]):+.2f} pts, " if known else ""
        print(f"  {name}: {delta}{speed}, {teacher[2]['bytes'] / facts['bytes']:.1f}x smaller")
    if not any("INT8" in name for name, _, _ in artifacts(args.run_dir)):
        print("  (no INT8 ONNX file in this run: see pipelines/quickstart_int8.yaml)")


if __name__ == "__main__":
    main()
