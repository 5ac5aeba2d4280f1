"""One prepared GPU check: the CUDA tests, the quickstart on cuda (fp32 vs bf16 + channels_last),
``compress bench`` on cuda (eager, torch-compile, CUDA graphs), the INT8 student on onnxruntime
CPU and, with the time left, the quickstart once more with ``train.compile`` on.

    PYTHONPATH=. python benchmarks/gpu_check.py [--out DIR] [--data-root DIR]
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --tiny   # same code path, tiny, CPU

Without a CUDA device (and ``--device cuda``, the default) it prints one line and exits 0. It
writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default ``$OUT``, else
``./gpu_check_out``) after each part, and keeps going past a failing part, recording its error.
Parts share ``--seconds`` (480): one still running then is stopped and recorded, the rest are
skipped, so the report is back before a device call's ``timeout_s`` (give it 540 or more).

On a lent GPU machine, H100 or H200 (torch with CUDA, onnx, onnxruntime CPU, typer, rich,
timm, matplotlib are there; pydantic and torch-pruning are not), from the repository root
here, once::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types \\
        typing-inspection typing-extensions torch-pruning pyyaml
    mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/    # /.whl/, /data/: ignored

then one device call carrying ``.whl`` and ``data`` (about 8 minutes; timeout_s 540)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
        && python3 benchmarks/gpu_check.py --data-root data

It also leaves the INT8 student's ONNX file as ``int8_student.onnx`` beside them: back here,
``compress bench int8_student.onnx --dataset fashion-mnist`` should give the top-1 it reports.

Goals it reports (ratios from the same run): bf16 + channels_last training >= 2x fp32 eager
images/s; student >= 3x the teacher's throughput at batch 256; p99/p50 <= 1.3 at batch 32 with
torch-compile or CUDA graphs (torch-cudagraph); bf16 top-1 within 0.5 point of fp32. TensorRT
and onnxruntime-gpu are too large to carry there, so those backends stay unexecuted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from compress.bench.environment import environment

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "pipelines" / "quickstart.yaml"
INT8 = ROOT / "pipelines" / "quickstart_int8.yaml"
VARIANTS = {  # fp32 eager against the fast path
    "fp32": ["teacher.channels_last=false", "distill.channels_last=false"],
    "bf16+channels_last": [
        "teacher.precision=bf16", "distill.precision=bf16",
        "teacher.channels_last=true", "distill.channels_last=true",
    ],
}  # fmt: skip
# last, with whatever time is left: the fast path with the training calls compiled
COMPILED = {"bf16+channels_last+compile": [
    *VARIANTS["bf16+channels_last"], "teacher.compile=true", "distill.compile=true",
]}  # fmt: skip
TESTS_SECONDS = 150.0
# tiny: the same stages and code, on small models and few images (a CPU test runs it)
TINY = [
    "data.image_size=16", "data.train_subset=256", "data.test_subset=128",
    "teacher.model.arch=resnet18",
    "distill.student.width_mult=0.25", "export.parity_images=32",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (tests, dry runs)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    parser.add_argument("--seconds", type=float, default=480.0,
                        help="time for all parts; a part still running then is stopped and "
                             "recorded, the rest skipped, so the report lands inside the "
                             "device call's limit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing checked")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    # run folders stay outside --out: the device returns at most 8 files from $OUT, and a call
    # stopped at its limit must still bring the report back
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    deadline = time.monotonic() + args.seconds
    args.time_left = lambda: max(0.0, deadline - time.monotonic())
    report: dict[str, Any] = {"environment": environment(None), "tiny": args.tiny}
    parts = {
        "tests": lambda: {"skipped": "--skip-tests"} if args.skip_tests else gpu_tests(args),
        "quickstart": lambda: quickstart(args, work),
        "bench": lambda: bench(args, work),
        "int8": lambda: int8(args, work),
        "compiled": lambda: quickstart(args, work, COMPILED),
    }
    try:
        for name, part in parts.items():
            started = time.perf_counter()
            if args.time_left() <= 0:
                report[name] = {"skipped": f"out of time (--seconds {args.seconds:g})"}
                continue
            try:
                report[name] = part()
            except subprocess.TimeoutExpired as exc:
                report[name] = {"error": f"stopped after {exc.timeout:.0f} s: out of time"}
            except Exception as exc:  # a part that breaks is a finding; the others still run
                report[name] = {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
            report[name]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"gpu_check: {name} done in {report[name]['seconds']} s", flush=True)
            write_report(report, args.out)  # after each part: a later kill loses only that part
        markdown = write_report(report, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # model files: too big to come back, not needed
    print(markdown)
    return 0


def write_report(report: dict[str, Any], out: Path) -> str:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out`` for the parts done so far."""
    report["goals"] = goals(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    (out / "gpu_check.md").write_text(markdown)
    return markdown


def compress(args: argparse.Namespace, *argv: str) -> subprocess.CompletedProcess:
    """``python -m compress ARGV`` from the repository root, within the time left; raises with
    its output's tail."""
    done = run_within([sys.executable, "-m", "compress", *argv], args.time_left())
    if done.returncode:
        raise RuntimeError(f"compress {' '.join(argv[:2])} exit {done.returncode}: "
                           f"{(done.stdout + done.stderr)[-1500:]}")  # fmt: skip
    return done


def run_within(command: list[str], seconds: float) -> subprocess.CompletedProcess:
    """``command`` from the repository root, output captured, stopped after ``seconds`` with
    everything it started: compile workers or data loaders left behind would hold its output
    pipes open, and the wait for them could outlast the device call."""
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as child:  # fmt: skip
        try:
            stdout, stderr = child.communicate(timeout=seconds)
        except subprocess.TimeoutExpired as exc:
            os.killpg(child.pid, signal.SIGKILL)
            exc.stdout, _ = child.communicate()
            raise
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


def gpu_tests(args: argparse.Namespace) -> dict[str, Any]:
    """``pytest -m gpu``, given at most TESTS_SECONDS: the figures after it matter more."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider",
               "tests"]  # fmt: skip
    try:
        done = run_within(command, min(TESTS_SECONDS, args.time_left()))
    except subprocess.TimeoutExpired as exc:  # what it printed so far says how far it got
        so_far = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {"error": f"stopped after {exc.timeout:.0f} s", "output_tail": so_far[-1500:]}
    last = (done.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"exit_code": done.returncode, "summary": last, **counts, "failures": failures}


def overrides(args: argparse.Namespace, fast_bench: bool = True) -> list[str]:
    sets = [f"device={args.device}"]
    if args.data_root is not None:
        sets.append(f"data.root={args.data_root.resolve()}")
    if args.tiny:
        sets += TINY
    if fast_bench:  # the pipeline's bench: onnxruntime on CPU; cuda latency is the bench part
        sets += ["bench.backends=[onnxruntime]", "bench.include_teacher=false",
                 "bench.min_iterations=20", "bench.min_seconds=0.2", "bench.warmup_seconds=0.1",
                 "bench.batch_sizes=[32]"]  # fmt: skip
    return as_sets(sets)


def as_sets(items: list[str]) -> list[str]:
    """``--set ITEM`` for each item, as ``compress run`` takes them."""
    return [arg for item in items for arg in ("--set", item)]


def quickstart(args: argparse.Namespace, work: Path,
               variants: dict[str, list[str]] = VARIANTS) -> dict[str, Any]:  # fmt: skip
    """The quickstart once per variant: training images/s per stage, top-1 of every model."""
    out: dict[str, Any] = {}
    for name, sets in variants.items():
        run_dir = work / name.replace("+", "_")
        started = time.perf_counter()
        extra = as_sets(sets)
        try:
            compress(args, "run", str(QUICKSTART), "--run-dir", str(run_dir), *overrides(args),
                     *extra)  # fmt: skip
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            if name == "fp32":  # bench and int8 build on this run: nothing more to measure
                raise
            out[name] = {"error": str(exc)[-2000:]}
            continue
        stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
        out[name] = {
            "seconds": round(time.perf_counter() - started, 1),
            "teacher_images_per_s": _rate(run_dir / "teacher" / "history.json"),
            "distill_images_per_s": _rate(run_dir / "distill" / "history.json"),
            "teacher_top1": stages["teacher"]["metrics"]["top1"],
            "student_top1": stages["distill"]["metrics"]["top1"],
            "student_onnx_top1": stages["bench"]["metrics"].get("top1"),
            "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
        }
    return out


def _rate(history: Path) -> float:
    epochs = json.loads(history.read_text())
    return round(sum(e["images_per_s"] * e["seconds"] for e in epochs)
                 / max(1e-9, sum(e["seconds"] for e in epochs)), 1)  # fmt: skip


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``compress bench`` of the fp32 run's teacher and student: eager, then (on cuda) eager
    replayed from CUDA graphs, then torch-compile (the slowest to start). A call that fails is
    recorded and the rest go on; out of time, the figures so far are kept."""
    run_dir = work / "fp32"
    sizes = "1,4" if args.tiny else "1,32,256"
    plan = ["--min-iterations", "5" if args.tiny else "300", "--min-seconds",
            "0" if args.tiny else "1.0", "--warmup-seconds", "0" if args.tiny else "1.0",
            "--max-seconds", "20"]  # fmt: skip
    out: dict[str, Any] = {}
    backends = bench_backends(args)
    for backend in backends:
        for role, model in (("student", "distill"), ("teacher", "teacher")):
            figures = work / f"bench-{role}-{backend}.json"
            try:
                compress(args, "bench", str(run_dir / model / "model.pt"), "--backend", backend,
                         "--device", args.device, "--batch-sizes", sizes, *plan,
                         "--json", str(figures))  # fmt: skip
            except RuntimeError as exc:
                out[f"{role}/{backend}"] = {"error": str(exc)[-1500:]}
                continue
            except subprocess.TimeoutExpired:
                out["stopped"] = f"out of time before {role}/{backend} was measured"
                return _with_speedups(out, backends)
            latency = json.loads(figures.read_text())["latency_ms"]
            out[f"{role}/{backend}"] = {
                bs: {k: s[k] for k in ("p50", "p90", "p99", "throughput")}
                for bs, s in latency.items()
            }
    return _with_speedups(out, backends)


def _with_speedups(out: dict[str, Any], backends: tuple[str, ...]) -> dict[str, Any]:
    """The student's throughput over the teacher's, per batch size, where both were measured."""
    for backend in backends:
        teacher, student = out.get(f"teacher/{backend}", {}), out.get(f"student/{backend}", {})
        if "error" in teacher or "error" in student:
            continue
        both = [bs for bs in student if bs in teacher]
        if both:
            out[f"student_speedup/{backend}"] = {
                bs: round(student[bs]["throughput"] / teacher[bs]["throughput"], 2) for bs in both
            }
    return out


def bench_backends(args: argparse.Namespace) -> tuple[str, ...]:
    """torch-cudagraph replays CUDA graphs: cuda only."""
    cuda = ("torch-cudagraph",) if args.device == "cuda" else ()
    return ("torch", *cuda, "torch-compile")


def int8(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """quickstart_int8 over a copy of the fp32 run (teacher and student reused): the INT8
    student's ONNX accuracy on onnxruntime CPU."""
    run_dir = work / "int8"
    shutil.copytree(work / "fp32", run_dir, dirs_exist_ok=True)
    sets = [*overrides(args, fast_bench=False),
            *as_sets(["bench.min_iterations=20", "bench.min_seconds=0.2", "bench.ratio_rounds=2"]),
            *as_sets(VARIANTS["fp32"])]  # fmt: skip
    # quickstart_int8 trains its own teacher and student otherwise (other batch size, lr, stem)
    sets += as_sets(same_training(QUICKSTART, INT8))
    if args.tiny:
        sets += as_sets(["ptq.calibration_images=64", "qat.calibration_images=64"])
    compress(args, "run", str(INT8), "--run-dir", str(run_dir), *sets)
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    metrics = stages["bench"]["metrics"]
    # the file itself comes back, so its top-1 can be measured again here: the same number on
    # onnxruntime CPU on both machines is what shows the artifact travels
    onnx = stages["export"]["artifacts"]["onnx"]
    shutil.copyfile(run_dir / onnx["path"], args.out / "int8_student.onnx")
    return {
        "int8_onnx_top1_onnxruntime_cpu": metrics.get("top1"),
        "int8_onnx_file": {"name": "int8_student.onnx", "sha256": onnx.get("sha256")},
        "fp32_onnx_top1": metrics.get("fp32_onnx_top1"),
        "qat_torch_top1": stages["qat"]["metrics"].get("top1"),
        "teacher_and_student_reused": all(
            stages[s].get("seconds", 0) == json.loads(
                (work / "fp32" / "manifest.json").read_text())["stages"][s].get("seconds")
            for s in ("teacher", "distill")
        ),
    }  # fmt: skip


def same_training(source: Path, target: Path, stages: tuple[str, ...] = ("teacher", "distill")
                  ) -> list[str]:  # fmt: skip
    """``--set`` items giving ``target``'s ``stages`` the settings of ``source``'s, so a run of
    ``target`` over a copy of a ``source`` run finds them unchanged and skips them."""
    from compress.config.load import load_pipeline
    from compress.stages.base import load_stages

    load_stages()
    want, have = (dict(load_pipeline(path).stage_items()) for path in (source, target))
    dump = {stage: (want[stage].model_dump(mode="json"), have[stage].model_dump(mode="json"))
            for stage in stages}  # fmt: skip
    return [item for stage, (w, h) in dump.items() for item in _differences(stage, w, h)]


def _differences(prefix: str, want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in want.items():
        if value == have.get(key):
            continue
        if isinstance(value, dict) and isinstance(have.get(key), dict):
            out += _differences(f"{prefix}.{key}", value, have[key])
        else:
            out.append(f"{prefix}.{key}={json.dumps(value)}")  # JSON is YAML, as --set reads it
    return out


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals as measured ratios (None where a part failed)."""
    out: dict[str, Any] = {}
    q, b = report.get("quickstart", {}), report.get("bench", {})
    runs = {**q, **report.get("compiled", {})}
    slow = runs.get("fp32", {})
    for variant, label in (("bf16+channels_last", "bf16"),
                           (*COMPILED, "bf16_compile")):  # fmt: skip
        fast = runs.get(variant, {})
        if "student_top1" in fast and "student_top1" in slow:
            for stage in ("teacher", "distill"):
                key = f"{stage}_images_per_s"
                out[f"{stage}_{label}_speedup (>= 2)"] = round(fast[key] / max(1e-9, slow[key]), 2)
            if label == "bf16":
                out["bf16_minus_fp32_student_top1 (>= -0.005)"] = round(
                    fast["student_top1"] - slow["student_top1"], 4
                )
    for backend in ("torch", "torch-compile", "torch-cudagraph"):
        speed = b.get(f"student_speedup/{backend}", {})
        if "256" in speed:
            out[f"student_speedup_batch256/{backend} (>= 3)"] = speed["256"]
        if backend != "torch" and (timed := b.get(f"student/{backend}", {}).get("32")):
            out[f"student_p99_over_p50_batch32/{backend} (<= 1.3)"] = round(
                timed["p99"] / timed["p50"], 2
            )
    return out


def render(report: dict[str, Any]) -> str:
    env = report["environment"]
    tiny = ", tiny" if report["tiny"] else ""
    lines = [f"# gpu_check ({env.get('gpu', 'no GPU')}, driver {env.get('gpu_driver') or '-'}, "
             f"CUDA {env.get('cuda', '-')}, torch {env['versions'].get('torch')}, "
             f"{env['cpu']}{tiny})", ""]  # fmt: skip
    t = report.get("tests", {})
    lines += [f"CUDA tests (pytest -m gpu): {t.get('summary') or _not_done(t)}"]
    lines += [f"- {failure}" for failure in t.get("failures", [])] + [""]
    q = report.get("quickstart", {})
    compiled = report.get("compiled", {})
    if not _not_done(q) and not _not_done(compiled):
        q = {**q, **{k: v for k, v in compiled.items() if isinstance(v, dict)}}
    if _not_done(q):
        lines += [f"quickstart: {_not_done(q)}", ""]
    else:
        lines += ["| quickstart | teacher img/s | distill img/s | teacher top-1 | student top-1 "
                  "| student ONNX top-1 | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {name} | {r['teacher_images_per_s']:,.0f} | {r['distill_images_per_s']:,.0f}"
                  f" | {r['teacher_top1']:.4f} | {r['student_top1']:.4f} | "
                  f"{r['student_onnx_top1']} | {r['seconds']} |" for name, r in q.items()
                  if isinstance(r, dict) and "error" not in r]  # fmt: skip
        lines += [f"- {name}: {r['error']}" for name, r in q.items()
                  if isinstance(r, dict) and "error" in r]  # fmt: skip
        lines.append("")
    b = report.get("bench", {})
    if _not_done(b):
        lines += [f"bench: {_not_done(b)}", ""]
    else:
        lines += [
            "| bench | batch | p50 ms | p90 ms | p99 ms | img/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, sizes in b.items():
            if isinstance(sizes, dict) and "speedup" not in key and "error" not in sizes:
                lines += [f"| {key} | {bs} | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} | "
                          f"{s['throughput']:,.0f} |" for bs, s in sizes.items()]  # fmt: skip
        for key, sizes in b.items():
            if "speedup" in key:
                lines.append(f"{key}: " + ", ".join(f"batch {k} x{v}" for k, v in sizes.items()))
        lines += [f"- {key}: {sizes['error']}" for key, sizes in b.items()
                  if isinstance(sizes, dict) and "error" in sizes]  # fmt: skip
        lines += [f"- {b['stopped']}"] if "stopped" in b else []
        lines.append("")
    if _not_done(compiled) and not _not_done(q):
        lines += [f"bf16+channels_last+compile: {_not_done(compiled)}", ""]
    lines += [f"INT8: {_not_done(report.get('int8', {})) or report['int8']}", "",
              "Goals (measured):"]  # fmt: skip
    lines += [f"- {k}: {v}" for k, v in report["goals"].items()] or ["- none measured"]
    return "\n".join(lines) + "\n"


def _not_done(part: dict[str, Any]) -> str:
    """Why a part has no figures ("" when it has them)."""
    if not part:
        return "not run"
    return part.get("error") or part.get("skipped") or ""


if __name__ == "__main__":
    raise SystemExit(main())
