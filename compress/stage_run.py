"""One stage's turn in a run: plan it from the manifest, record it, run it, record the result.

Planning resolves the stage's inputs (nearest earlier producer, or the stage named in ``input``)
and fingerprints it (stage config + data config + seed + input checksums); a finished entry with
the same fingerprint and intact artifacts means the stage is skipped. The in-order runner and
the parallel jobs share these steps, so both record exactly the same entries.
"""

from __future__ import annotations

import os
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from compress.bench.environment import host
from compress.config.pipeline import PipelineSettings, find_producer
from compress.errors import CompressError
from compress.io import sha256_json
from compress.manifest import Manifest
from compress.stages import STAGES, StageContext, StageInput, StageResult
from compress.ui import console

HASH_EXCLUDED_DATA_KEYS = ("workers", "eval_batch_size", "cache")


def plan_stage(
    pipeline: PipelineSettings, stages: list[tuple[str, Any]], position: int, manifest: Manifest
) -> tuple[dict[str, StageInput], str, bool]:
    """A stage's inputs (from the manifest), its fingerprint, and whether a finished entry with
    that fingerprint and intact artifacts makes running it again unnecessary."""
    name, cfg = stages[position]
    inputs = _resolve_inputs(name, cfg, stages[:position], manifest)
    fingerprint = stage_fingerprint(pipeline, cfg, inputs)
    return inputs, fingerprint, _unchanged(manifest, name, fingerprint)


def start_entry(
    manifest: Manifest,
    name: str,
    cfg: Any,
    inputs: dict[str, StageInput],
    fingerprint: str,
    again: bool,
    save: bool = True,
) -> dict[str, Any]:
    """Record the stage as running (and clear its checkpoint when it re-runs from scratch)."""
    entry = {"type": cfg.type, "status": "running", "config_hash": fingerprint,
             "inputs": {k: _input_record(v) for k, v in inputs.items()},
             "started_at": _now()}  # fmt: skip
    manifest.stages[name] = entry
    if save:
        stage_dir = inside(manifest.run_dir, name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if again:
            (stage_dir / "checkpoint.pt").unlink(missing_ok=True)
        manifest.save()
    return entry


def stage_context(
    pipeline: PipelineSettings,
    manifest: Manifest,
    name: str,
    cfg: Any,
    inputs: dict[str, StageInput],
    fingerprint: str,
    device: torch.device,
) -> StageContext:
    return StageContext(
        name,
        manifest.run_dir,
        inside(manifest.run_dir, name),
        inputs,
        fingerprint,
        device,
        data_config=cfg.data or pipeline.data,
        seed=pipeline.seed,
    )


def torch_settings(threads: int | None, deterministic: bool) -> None:
    """The process-wide torch settings a pipeline asks for, in the runner's process or a job's."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def execute_stage(cfg: Any, ctx: StageContext) -> tuple[StageResult, dict[str, Any]]:
    """Run one stage: its result, and its wall and CPU seconds with the host (CPU, threads) of
    the process that ran it."""
    started, cpu_started = time.perf_counter(), time.process_time()
    # each stage starts from its own seed, so skipping or resuming earlier stages (or running
    # it in another process) cannot change what this one draws (model init, dropout)
    torch.manual_seed(ctx.seed * 1_000_003 + zlib.crc32(ctx.name.encode()))
    result = STAGES.get(cfg.type).run(cfg, ctx)
    timing = {
        "seconds": round(time.perf_counter() - started, 2),
        # CPU time of the process that ran it: less sensitive to other load than wall clock
        "cpu_seconds": round(time.process_time() - cpu_started, 2),
        "host": host(),
    }
    return result, timing


def fail_entry(entry: dict[str, Any], exc: BaseException) -> None:
    entry.update(status="failed", error=str(exc).splitlines()[0][:500] if str(exc)
                 else type(exc).__name__, finished_at=_now())  # fmt: skip
    if isinstance(exc, KeyboardInterrupt):
        entry["status"] = "interrupted"


def finish_entry(
    manifest: Manifest, name: str, entry: dict[str, Any], result: StageResult, timing: dict
) -> None:
    entry.update(
        status="done",
        metrics=result.metrics,
        artifacts={k: manifest.artifact_record(p) for k, p in result.artifacts.items()},
        **timing,
        finished_at=_now(),
        versions=manifest.data["versions"],
    )
    manifest.save()
    console.print(f"[green]✓ {name}[/] in {entry['seconds']:.1f}s {_headline(result.metrics)}")


def inside(run_dir: Path, relative: str) -> Path:
    """``run_dir / relative``, refused if it would lead outside the run directory (config
    validation already rejects such stage names; this guards every other caller)."""
    path = run_dir / relative
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise CompressError(f"'{relative}' would write outside the run directory {run_dir}")
    return path


def _omitted_at_default(cfg: Any) -> set[str]:
    """Keys added after run directories existed, left out of the fingerprint while they hold
    their default: upgrading compress must not make those runs' stages run again."""
    return {
        name
        for name, field in type(cfg).model_fields.items()
        if (field.json_schema_extra or {}).get("fingerprint") == "omit-default"
        and getattr(cfg, name) == field.default
    }


def stage_fingerprint(pipeline: PipelineSettings, cfg: Any, inputs: dict[str, StageInput]) -> str:
    data_cfg = cfg.data or pipeline.data
    data = data_cfg.model_dump(mode="json", exclude=set(HASH_EXCLUDED_DATA_KEYS))
    fingerprint: dict[str, Any] = {
        # data: the effective block
        "stage": cfg.model_dump(mode="json", exclude={"data", *_omitted_at_default(cfg)}),
        "data": data,
        "seed": pipeline.seed,
        "deterministic": pipeline.deterministic,
        "inputs": {k: v.entry["artifacts"] for k, v in sorted(inputs.items())},
    }
    version = STAGES.get(cfg.type).version
    if version != 1:  # version 1 adds nothing, so existing run directories stay unchanged
        fingerprint["version"] = version
    return sha256_json(fingerprint)


def _resolve_inputs(
    name: str, cfg: Any, earlier: list[tuple[str, Any]], manifest: Manifest
) -> dict[str, StageInput]:
    inputs = {}
    for key, (kind, producer, required) in _sources(cfg, earlier).items():
        entry = manifest.stages.get(producer, {})
        if entry.get("status") != "done":
            if required:
                raise CompressError(f"stage '{name}' needs '{producer}', which has not finished")
            continue
        inputs[key] = StageInput(producer, kind, entry, manifest.run_dir)
    return inputs


def stage_sources(stages: list[tuple[str, Any]], position: int) -> set[str]:
    """The earlier stages whose artifacts the stage at ``position`` would read."""
    sources = _sources(stages[position][1], stages[:position])
    return {producer for _, producer, _ in sources.values()}


def _sources(cfg: Any, earlier: list[tuple[str, Any]]) -> dict[str, tuple[str, str, bool]]:
    """input key -> (artifact kind, producing stage, required)."""
    spec = STAGES.get(cfg.type)
    sources = {}
    for i, (kind, required) in enumerate(spec.consumes(cfg).items()):
        # ``input`` names the source of a stage's main input, its first consumed kind
        producer = find_producer(earlier, kind, cfg.input if i == 0 else None)
        if producer is not None:
            sources[kind] = (kind, producer, required)
    for key, (kind, source) in spec.extra_inputs(cfg).items():
        sources[key] = (kind, source, True)
    return sources


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
