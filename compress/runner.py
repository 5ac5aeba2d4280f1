"""Run a validated pipeline stage by stage into its run directory.

For each stage: resolve its inputs from the manifest, fingerprint (stage config + data config +
seed + input checksums), skip it if a finished entry has the same fingerprint and intact
artifacts, otherwise run it (a training stage resumes from its checkpoint) and record the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress import distributed
from compress.config.pipeline import PipelineSettings, find_producer
from compress.errors import CompressError, did_you_mean
from compress.io import sha256_json
from compress.manifest import Manifest, library_versions
from compress.stages import STAGES, StageContext, StageInput
from compress.ui import console

HASH_EXCLUDED_DATA_KEYS = ("workers", "eval_batch_size", "cache")


def run_pipeline(
    pipeline: PipelineSettings,
    run_dir: Path,
    force: bool = False,
    rerun: list[str] | None = None,
) -> Manifest:
    """``force`` re-runs every stage; ``rerun`` names stages to re-run from scratch (stages that
    consume their outputs re-run too when the outputs' checksums change)."""
    names = [n for n, _ in pipeline.stage_items()]
    for name in rerun or []:
        if name not in names:
            raise CompressError(f"--rerun: no stage '{name}'{did_you_mean(name, names)}")
    main = distributed.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) if main else contextlib.nullcontext():
        device = configure_torch(pipeline)
        manifest = Manifest.load(run_dir)
        manifest.data["pipeline"] = {
            "name": pipeline.name,
            "config_hash": sha256_json(pipeline.model_dump(mode="json")),
            "config": pipeline.model_dump(mode="json"),
        }
        manifest.data["versions"] = library_versions()
        stages = pipeline.stage_items()
        for position, (name, cfg) in enumerate(stages):
            spec = STAGES.get(cfg.type)
            inputs = _resolve_inputs(name, cfg, stages[:position], manifest)
            fingerprint = stage_fingerprint(pipeline, cfg, inputs)
            again = force or name in (rerun or [])
            # rank 0 decides, from the manifest only it writes
            skip = distributed.broadcast(not again and _unchanged(manifest, name, fingerprint))
            if skip:
                console.print(f"[dim]• {name}: unchanged, skipped[/]")
                continue
            stage_dir = inside(run_dir, name)
            console.rule(f"[bold]{name}[/] ({cfg.type})", align="left")
            entry = {"type": cfg.type, "status": "running", "config_hash": fingerprint,
                     "inputs": {k: _input_record(v) for k, v in inputs.items()},
                     "started_at": _now()}  # fmt: skip
            manifest.stages[name] = entry
            if main:
                stage_dir.mkdir(parents=True, exist_ok=True)
                if again:
                    (stage_dir / "checkpoint.pt").unlink(missing_ok=True)
                manifest.save()
            distributed.barrier()  # the others start after rank 0 has cleared the stage
            ctx = StageContext(
                name,
                run_dir,
                stage_dir,
                inputs,
                fingerprint,
                device,
                data_config=cfg.data or pipeline.data,
                seed=pipeline.seed,
            )
            started, cpu_started = time.perf_counter(), time.process_time()
            # each stage starts from its own seed, so skipping or resuming earlier stages
            # cannot change what this one draws (model init, dropout)
            torch.manual_seed(pipeline.seed * 1_000_003 + zlib.crc32(name.encode()))
            try:
                # under torchrun training stages run on every process, the others on rank 0
                result = spec.run(cfg, ctx) if main or spec.distributed else None
            except BaseException as exc:
                entry.update(status="failed", error=str(exc).splitlines()[0][:500] if str(exc)
                             else type(exc).__name__, finished_at=_now())  # fmt: skip
                if isinstance(exc, KeyboardInterrupt):
                    entry["status"] = "interrupted"
                if main:
                    manifest.save()
                raise
            if main and result is not None:
                entry.update(
                    status="done",
                    metrics=result.metrics,
                    artifacts={k: manifest.artifact_record(p) for k, p in result.artifacts.items()},
                    seconds=round(time.perf_counter() - started, 2),
                    # CPU time of this process: less sensitive to other load than wall clock
                    cpu_seconds=round(time.process_time() - cpu_started, 2),
                    finished_at=_now(),
                    versions=manifest.data["versions"],
                )
                manifest.save()
                console.print(
                    f"[green]✓ {name}[/] in {entry['seconds']:.1f}s {_headline(result.metrics)}"
                )
            distributed.barrier()  # the others go on with what rank 0 recorded
            if not main:
                manifest = Manifest.load(run_dir)
        # a stage removed from the pipeline no longer belongs in the manifest
        for name in list(manifest.stages):
            if name not in dict(stages):
                del manifest.stages[name]
        if main:
            manifest.save()
        return manifest


def inside(run_dir: Path, relative: str) -> Path:
    """``run_dir / relative``, refused if it would lead outside the run directory (config
    validation already rejects such stage names; this guards every other caller)."""
    path = run_dir / relative
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise CompressError(f"'{relative}' would write outside the run directory {run_dir}")
    return path


def stage_fingerprint(pipeline: PipelineSettings, cfg: Any, inputs: dict[str, StageInput]) -> str:
    data_cfg = cfg.data or pipeline.data
    data = data_cfg.model_dump(mode="json", exclude=set(HASH_EXCLUDED_DATA_KEYS))
    fingerprint: dict[str, Any] = {
        "stage": cfg.model_dump(mode="json", exclude={"data"}),  # data: the effective block
        "data": data,
        "seed": pipeline.seed,
        "deterministic": pipeline.deterministic,
        "inputs": {k: v.entry["artifacts"] for k, v in sorted(inputs.items())},
    }
    version = STAGES.get(cfg.type).version
    if version != 1:  # version 1 adds nothing, so existing run directories stay unchanged
        fingerprint["version"] = version
    return sha256_json(fingerprint)


def configure_torch(pipeline: PipelineSettings) -> torch.device:
    if pipeline.threads:
        torch.set_num_threads(pipeline.threads)
    random.seed(pipeline.seed)
    np.random.seed(pipeline.seed)
    torch.manual_seed(pipeline.seed)
    if pipeline.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if pipeline.device == "cuda" and not torch.cuda.is_available():
        raise CompressError("device: cuda was asked for, but no CUDA device is available")
    use_cuda = pipeline.device == "cuda" or (
        pipeline.device == "auto" and torch.cuda.is_available()
    )
    device = torch.device("cuda" if use_cuda else "cpu")
    for name, cfg in pipeline.stage_items():
        if getattr(cfg, "precision", None) == "fp16" and device.type != "cuda":
            raise CompressError(
                f"{name}.precision: fp16 trains on a GPU only (with a gradient scaler); "
                "use bf16 or fp32 on CPU"
            )
    return distributed.setup(device)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One ``compress run`` per run directory at a time."""
    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompressError(
                f"{run_dir} is in use by another compress run; wait for it or use --run-dir"
            ) from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _resolve_inputs(
    name: str, cfg: Any, earlier: list[tuple[str, Any]], manifest: Manifest
) -> dict[str, StageInput]:
    inputs = {}
    for i, (kind, required) in enumerate(STAGES.get(cfg.type).consumes(cfg).items()):
        # ``input`` names the source of a stage's main input, its first consumed kind
        producer = find_producer(earlier, kind, cfg.input if i == 0 else None)
        if producer is None:
            continue
        entry = manifest.stages.get(producer, {})
        if entry.get("status") != "done":
            if required:
                raise CompressError(f"stage '{name}' needs '{producer}', which has not finished")
            continue
        inputs[kind] = StageInput(producer, kind, entry, manifest.run_dir)
    for key, (kind, source) in STAGES.get(cfg.type).extra_inputs(cfg).items():
        entry = manifest.stages.get(source, {})
        if entry.get("status") != "done":
            raise CompressError(f"stage '{name}' needs '{source}', which has not finished")
        inputs[key] = StageInput(source, kind, entry, manifest.run_dir)
    return inputs


def _input_record(source: StageInput) -> dict[str, Any]:
    artifact = "onnx" if source.kind == "onnx" else "model"
    record = source.entry["artifacts"].get(artifact, {})
    return {"stage": source.stage, "artifact": artifact, "path": record.get("path"),
            "sha256": record.get("sha256")}  # fmt: skip


def _unchanged(manifest: Manifest, name: str, fingerprint: str) -> bool:
    entry = manifest.stages.get(name)
    return bool(entry) and entry.get("config_hash") == fingerprint and manifest.intact(name)


def _headline(metrics: dict[str, Any]) -> str:
    if "top1" in metrics:
        return f"top1 {metrics['top1']:.4f}"
    if "max_abs_diff" in metrics:
        return (
            f"max |diff| {metrics['max_abs_diff']:.1e}, agreement {metrics['top1_agreement']:.4f}"
        )
    return ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
