"""Run a pipeline's stages several at a time, each in its own process (``jobs: N``).

A stage starts once every stage it reads from has finished, so a grid's cells train side by
side after their teacher. The parent process owns the manifest: it plans each stage, records it
as running, hands the stage to a worker and records the result; workers only train and write
their own stage folder. Each stage seeds itself from its name, so with the same ``threads`` a
cell trains to the same weights here as in one process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from compress.config.pipeline import PipelineSettings
from compress.errors import CompressError
from compress.manifest import Manifest
from compress.stage_run import (
    execute_stage,
    fail_entry,
    finish_entry,
    plan_stage,
    stage_context,
    stage_sources,
    start_entry,
    torch_settings,
)
from compress.ui import console, progress


def run_in_parallel(
    pipeline: PipelineSettings, manifest: Manifest, device: torch.device, again: set[str]
) -> None:
    """Run (or skip) every stage, up to ``pipeline.jobs`` at once; the first failure stops new
    starts, lets the running ones finish and is raised."""
    stages = pipeline.stage_items()
    sources = [stage_sources(stages, i) for i in range(len(stages))]
    threads = pipeline.threads or max(1, (os.cpu_count() or 1) // pipeline.jobs)
    waiting = list(range(len(stages)))
    finished: set[str] = set()
    running: dict[Future, tuple[str, dict[str, Any]]] = {}
    failure: BaseException | None = None
    console.print(f"{pipeline.jobs} jobs of {threads} thread(s) each; workers print no progress")
    pool = ProcessPoolExecutor(
        pipeline.jobs,
        mp_context=multiprocessing.get_context("spawn"),  # no forked torch thread pools
        initializer=_start_worker,
        initargs=(threads, pipeline.deterministic, os.getpid()),
    )
    try:
        with progress() as bar:
            task = bar.add_task("stages", total=len(stages), stats="")
            while waiting or running:
                ready = [p for p in waiting if sources[p] <= finished]
                if ready and failure is None and len(running) < pipeline.jobs:
                    position = ready[0]
                    waiting.remove(position)
                    name, cfg = stages[position]
                    planned = plan_stage(pipeline, stages, position, manifest)
                    inputs, fingerprint, unchanged = planned
                    if name not in again and unchanged:
                        console.print(f"[dim]• {name}: unchanged, skipped[/]")
                        finished.add(name)
                        bar.advance(task)
                        continue
                    entry = start_entry(manifest, name, cfg, inputs, fingerprint, name in again)
                    ctx = stage_context(pipeline, manifest, name, cfg, inputs, fingerprint, device)
                    with _ctrl_c_ignored():  # inherited by a worker this submit starts
                        running[pool.submit(execute_stage, cfg, ctx)] = (name, entry)
                    console.print(f"▶ {name} ({cfg.type}) started")
                    continue
                if not running:
                    break  # after a failure: what is left waits for the next run
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name, entry = running.pop(future)
                    error = _record(manifest, name, entry, future)
                    if error is not None:
                        # the first error ends the run (the CLI prints it); later ones here
                        later = "" if failure is None else f": {entry['error']}"
                        console.print(f"[red]✗ {name}[/] failed{later}")
                        failure = failure or error
                    else:
                        finished.add(name)
                    bar.advance(task)
    except BaseException:
        # Ctrl-C (workers ignore it) or an error here: stop the workers; their stages resume
        # from their checkpoints on the next run, as a stage interrupted in one process does
        for worker in multiprocessing.active_children():
            worker.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        for _, entry in running.values():
            fail_entry(entry, KeyboardInterrupt())
        manifest.save()
        raise
    pool.shutdown()
    if failure is not None:
        raise failure


def _record(
    manifest: Manifest, name: str, entry: dict[str, Any], future: Future
) -> BaseException | None:
    """Record a finished job as done, or as failed with the worker's error (returned)."""
    try:
        finish_entry(manifest, name, entry, *future.result())
        return None
    except BaseException as exc:  # the worker's error, raised again here
        if isinstance(exc, BrokenProcessPool):
            exc = CompressError(
                f"{name}: its worker process died (out of memory? try fewer jobs); "
                "run again to resume"
            )
        fail_entry(entry, exc)
        manifest.save()
        return exc


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Workers ignore Ctrl-C from their first instruction on (no half-imported tracebacks):
    an ignored signal stays ignored in the process a spawn starts."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_worker(threads: int, deterministic: bool, parent: int) -> None:
    _die_with_parent(parent)
    torch_settings(threads, deterministic)
    console.quiet = True  # several workers' progress bars would garble one terminal


def _die_with_parent(parent: int) -> None:
    """A worker whose parent is killed outright (SIGKILL, the OOM killer) gets SIGTERM and
    stops, instead of training on into a run directory nobody records (Linux only)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
