"""Run a validated pipeline into its run directory: stage by stage, or ``jobs`` at a time.

For each stage (``compress.stage_run``): resolve its inputs from the manifest, fingerprint it,
skip it if a finished entry has the same fingerprint and intact artifacts, otherwise run it (a
training stage resumes from its checkpoint) and record the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from compress import distributed
from compress.config.pipeline import PipelineSettings
from compress.errors import CompressError, did_you_mean
from compress.io import sha256_json
from compress.jobs import run_in_parallel
from compress.manifest import Manifest, library_versions
from compress.stage_run import (
    execute_stage,
    fail_entry,
    finish_entry,
    plan_stage,
    stage_context,
    start_entry,
    torch_settings,
)
from compress.stages import STAGES
from compress.ui import console


def run_pipeline(
    pipeline: PipelineSettings,
    run_dir: Path,
    force: bool = False,
    rerun: list[str] | None = None,
    command: str | None = None,
) -> Manifest:
    """``force`` re-runs every stage; ``rerun`` names stages to re-run from scratch (stages that
    consume their outputs re-run too when the outputs' checksums change); ``command`` (the
    command line) is kept in the manifest beside the config it produced."""
    names = [n for n, _ in pipeline.stage_items()]
    for name in rerun or []:
        if name not in names:
            raise CompressError(f"--rerun: no stage '{name}'{did_you_mean(name, names)}")
    if pipeline.jobs > 1 and distributed.env_world_size() > 1:
        raise CompressError("jobs > 1 runs stages in parallel processes: not under torchrun")
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
            "command": command,
        }
        manifest.data["versions"] = library_versions()
        manifest.focus(names)
        again = set(names) if force else set(rerun or [])
        if pipeline.jobs > 1:
            run_in_parallel(pipeline, manifest, device, again)
        else:
            _run_in_order(pipeline, manifest, device, again)
        manifest.focus(names)  # pipeline order, however the stages finished
        if main:
            manifest.save()
        return manifest


def _run_in_order(
    pipeline: PipelineSettings, manifest: Manifest, device: torch.device, again: set[str]
) -> None:
    main = distributed.is_main()
    stages = pipeline.stage_items()
    for position, (name, cfg) in enumerate(stages):
        inputs, fingerprint, unchanged = plan_stage(pipeline, stages, position, manifest)
        # rank 0 decides, from the manifest only it writes
        if distributed.broadcast(name not in again and unchanged):
            console.print(f"[dim]• {name}: unchanged, skipped[/]")
            continue
        console.rule(f"[bold]{name}[/] ({cfg.type})", align="left")
        entry = start_entry(manifest, name, cfg, inputs, fingerprint, name in again, save=main)
        distributed.barrier()  # the others start after rank 0 has cleared the stage
        ctx = stage_context(pipeline, manifest, name, cfg, inputs, fingerprint, device)
        try:
            # under torchrun training stages run on every process, the others on rank 0
            spec = STAGES.get(cfg.type)
            ran = execute_stage(cfg, ctx) if main or spec.distributed else None
        except BaseException as exc:
            fail_entry(entry, exc)
            if main:
                manifest.save()
            raise
        if main and ran is not None:
            finish_entry(manifest, name, entry, *ran)
        distributed.barrier()  # the others go on with what rank 0 recorded
        if not main:
            manifest.data["stages"] = Manifest.load(manifest.run_dir).stages


def configure_torch(pipeline: PipelineSettings) -> torch.device:
    torch_settings(pipeline.threads, pipeline.deterministic)
    random.seed(pipeline.seed)
    np.random.seed(pipeline.seed)
    torch.manual_seed(pipeline.seed)
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
