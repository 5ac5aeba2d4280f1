"""The quickstart before and after a config change, run back to back on one machine.

    .venv/bin/python benchmarks/quickstart_speedup.py \
        --before-set distill.student.stem=cifar [--pipeline pipelines/quickstart.yaml]

Runs ``compress run`` from scratch twice in fresh run directories, first with the ``--before-set``
overrides (the old config), then as the pipeline is shipped, and reports wall-clock seconds per
stage (and inside training stages: training, evaluation, teacher logits; the JSON also keeps each
stage's CPU seconds), the whole-run ratio and both runs' accuracies against the quickstart's
targets. A measurement, not a test. Writes benchmarks/results/quickstart/speedup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "quickstart"
TARGETS = {"teacher": 0.87, "distill": 0.85}
INNER = ("train_seconds", "eval_seconds", "teacher_logits_seconds")


def cpu_name() -> str:
    from compress.bench.environment import environment

    env = environment(None)
    return f"{env['cpu']} ({', '.join(env['isa'])}), {env['cores']} cores"


def run(pipeline: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "compress", "run", pipeline, "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = {}
    for name, stage in manifest["stages"].items():
        metrics = stage.get("metrics", {})
        stages[name] = {
            "seconds": stage.get("seconds"),
            "cpu_seconds": stage.get("cpu_seconds"),
            "top1": metrics.get("top1"),
            **{key: metrics[key] for key in INNER if key in metrics},
        }
    return {"command": " ".join(command[1:]), "wall_seconds": round(wall, 1), "stages": stages}


def markdown(results: dict[str, Any]) -> str:
    before, after = results["runs"]["before"], results["runs"]["after"]
    lines = [
        "# The quickstart before and after, back to back",
        "",
        f"CPU: {results['cpu']}; before: `--set {' --set '.join(results['before_set'])}`",
        "",
        "| stage (seconds) | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    for stage in after["stages"]:
        for key in ("seconds", *INNER):
            old = before["stages"].get(stage, {}).get(key)
            new = after["stages"][stage].get(key)
            if old is None or new is None:
                continue
            label = stage if key == "seconds" else f"{stage}: {key.removesuffix('_seconds')}"
            lines.append(f"| {label} | {old:.1f} | {new:.1f} | {new / old:.2f} |")
    lines.append(
        f"| whole run, wall clock | {before['wall_seconds']:.0f} | {after['wall_seconds']:.0f} "
        f"| {results['ratio']:.2f} |"
    )
    lines += ["", "| top-1 | before | after | target |", "|---|---:|---:|---:|"]
    for stage in ("teacher", "distill", "bench"):
        old, new = before["stages"][stage]["top1"], after["stages"][stage]["top1"]
        target = TARGETS.get(stage)
        label = "student ONNX" if stage == "bench" else stage
        goal = f">= {100 * target:.0f}%" if target else "within 0.1 of distill"
        lines.append(f"| {label} | {100 * old:.2f}% | {100 * new:.2f}% | {goal} |")
    change = 100 * (1 - results["ratio"])
    lines += ["", f"Whole run {change:.1f}% faster (goal: 25%)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/quickstart.yaml")
    parser.add_argument("--before-set", action="append", required=True, metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compress-quickstart-") as tmp:
        before = run(args.pipeline, Path(tmp) / "before", args.before_set)
        after = run(args.pipeline, Path(tmp) / "after", [])
    results = {
        "benchmark": "benchmarks/quickstart_speedup.py --pipeline "
        + args.pipeline
        + "".join(f" --before-set {item}" for item in args.before_set),
        "cpu": cpu_name(),
        "before_set": args.before_set,
        "runs": {"before": before, "after": after},
        "ratio": round(after["wall_seconds"] / before["wall_seconds"], 3),
    }
    from compress.io import write_json, write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "speedup.json", results)
    write_text(RESULTS / "speedup.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
