"""Side-by-side onnxruntime latency of the unpruned and the pruned student of a run.

    .venv/bin/python benchmarks/prune_speedup.py [--run-dir runs/quickstart_prune]

Both ONNX files are timed in interleaved rounds in one process (the machine's noise lands on
both), at batch 1 and 32; prints throughput and the speed-up ratio. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from compress.bench.backends import BackendOptions, load_runner
from compress.bench.sidebyside import interleaved_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart_prune"))
    parser.add_argument("--unpruned", default="export_unpruned")
    parser.add_argument("--pruned", default="export")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    stages = json.loads((args.run_dir / "manifest.json").read_text())["stages"]
    paths = {
        name: args.run_dir / stages[stage]["artifacts"]["onnx"]["path"]
        for name, stage in (("unpruned", args.unpruned), ("pruned", args.pruned))
    }
    prune = next((e for e in stages.values() if e["type"] == "prune"), {}).get("metrics", {})
    if prune:
        print(f"MACs kept {prune['macs_kept']:.3f}, params kept {prune['params_kept']:.3f}; "
              f"top-1 {prune['before']['top1']:.4f} -> {prune['top1']:.4f}")  # fmt: skip
    runners = {
        name: load_runner("onnxruntime", path, BackendOptions(threads=args.threads))
        for name, path in paths.items()
    }
    shape = [d if isinstance(d, int) else 1 for d in _input_shape(paths["unpruned"])]
    for batch_size in (1, 32):
        batch = (
            np.random.default_rng(0).standard_normal((batch_size, *shape[1:])).astype(np.float32)
        )
        calls = {name: (lambda r=r, b=batch: r.call(b)) for name, r in runners.items()}
        stats = interleaved_latency(calls, batch_size, rounds=args.rounds)
        for name, s in stats.items():
            print(
                f"batch {batch_size:>3} {name:<9} p50 {s['p50']:7.3f} ms  "
                f"p99 {s['p99']:7.3f} ms  {s['throughput']:9,.0f} img/s"
            )
        ratio = stats["pruned"]["throughput"] / stats["unpruned"]["throughput"]
        p50_ratio = stats["unpruned"]["p50"] / stats["pruned"]["p50"]
        print(f"batch {batch_size:>3} speed-up: x{ratio:.2f} throughput, x{p50_ratio:.2f} p50")


def _input_shape(path: Path) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape


if __name__ == "__main__":
    main()
