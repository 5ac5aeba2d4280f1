"""Side-by-side onnxruntime latency of two ONNX files of one run: the speed-up of a candidate.

    .venv/bin/python benchmarks/onnx_speedup.py --run-dir runs/quickstart_int8 \\
        --baseline export:onnx_fp32 --candidate export:onnx          # INT8 vs its FP32 twin
    .venv/bin/python benchmarks/onnx_speedup.py --run-dir runs/quickstart_prune \\
        --baseline export_unpruned --candidate export                # pruned vs unpruned

Both files are timed in interleaved rounds in one process (the machine's noise lands on both),
at batch 1 and 32; prints latency, throughput and the speed-up ratio. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compress.bench.sidebyside import onnx_side_by_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart_int8"))
    parser.add_argument("--baseline", default="export:onnx_fp32", help="STAGE[:ARTIFACT]")
    parser.add_argument("--candidate", default="export:onnx", help="STAGE[:ARTIFACT]")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    stages = json.loads((args.run_dir / "manifest.json").read_text())["stages"]
    paths = {
        role: args.run_dir / stages[stage]["artifacts"][artifact or "onnx"]["path"]
        for role, (stage, _, artifact) in (
            ("baseline", args.baseline.partition(":")),
            ("candidate", args.candidate.partition(":")),
        )
    }
    for entry in stages.values():  # what the candidate cost in accuracy, where a stage says
        metrics = entry.get("metrics", {})
        if entry["type"] == "prune":
            print(f"prune: MACs kept {metrics['macs_kept']:.3f}, params kept "
                  f"{metrics['params_kept']:.3f}; top-1 {metrics['before']['top1']:.4f} -> "
                  f"{metrics['top1']:.4f}")  # fmt: skip
        if entry["type"] in ("ptq", "qat"):
            print(f"{entry['type']}: top-1 float {metrics['float_top1']:.4f} -> "
                  f"{metrics['top1']:.4f} (PTQ {metrics['ptq_top1']:.4f})")  # fmt: skip
        if entry["type"] == "bench" and "fp32_onnx_top1" in metrics:
            print(f"bench: ONNX top-1 INT8 {metrics['top1']:.4f}, FP32 "
                  f"{metrics['fp32_onnx_top1']:.4f}")  # fmt: skip
    shape = [d if isinstance(d, int) else 1 for d in _input_shape(paths["baseline"])]
    measured = onnx_side_by_side(paths, tuple(shape[1:]), (1, 32), args.rounds, args.threads)
    for batch_size, stats in measured.items():
        for role, s in stats.items():
            print(
                f"batch {batch_size:>3} {role:<9} p50 {s['p50']:7.3f} ms  "
                f"p99 {s['p99']:7.3f} ms  {s['throughput']:9,.0f} img/s"
            )
        ratio = stats["candidate"]["throughput"] / stats["baseline"]["throughput"]
        p50_ratio = stats["baseline"]["p50"] / stats["candidate"]["p50"]
        print(f"batch {batch_size:>3} speed-up: x{ratio:.2f} throughput, x{p50_ratio:.2f} p50")


def _input_shape(path: Path) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape


if __name__ == "__main__":
    main()
