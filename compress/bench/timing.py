"""Time a callable properly: warm-up, then iterations by count and by duration; summarise.

The default plan runs at least 1,000 iterations and at least 3 s (or until ``max_seconds``), so
p99 is the 10th-largest of >= 1,000 samples rather than the maximum; p99.9 needs that many too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p99_9": 99.9}


@dataclass(frozen=True)
class TimingPlan:
    """The defaults are ``compress bench``'s (one artifact)."""

    warmup_iterations: int = 10
    warmup_seconds: float = 0.5
    min_iterations: int = 1000
    min_seconds: float = 3.0
    max_seconds: float = 30.0


# the bench stage times several models x batch sizes in one run: a shorter cap on each
STAGE_PLAN = TimingPlan(max_seconds=20.0)


def time_calls(fn: Callable[[], object], plan: TimingPlan) -> np.ndarray:
    """Latencies (ms): after warm-up, run until both minimums are met, or max_seconds passed."""
    start = time.perf_counter()
    done = 0
    while done < plan.warmup_iterations or time.perf_counter() - start < plan.warmup_seconds:
        fn()
        done += 1
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        enough = len(samples) >= plan.min_iterations and elapsed >= plan.min_seconds
        if enough or elapsed >= plan.max_seconds:
            return np.asarray(samples)


def time_cuda_calls(fn: Callable[[], object], plan: TimingPlan) -> np.ndarray:
    """Like ``time_calls`` for work queued on a CUDA stream: each call is bracketed by CUDA events
    and synchronised, so the sample is GPU time of that call, not the launch time on the host."""
    import torch  # here, not at the top: the CLI reads TimingPlan's defaults without loading torch

    warm = TimingPlan(plan.warmup_iterations, plan.warmup_seconds, 1, 0.0, plan.max_seconds)
    time_calls(lambda: (fn(), torch.cuda.synchronize()), warm)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        begin.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
        elapsed = time.perf_counter() - start
        enough = len(samples) >= plan.min_iterations and elapsed >= plan.min_seconds
        if enough or elapsed >= plan.max_seconds:
            return np.asarray(samples)


def summarize(latencies_ms: np.ndarray, batch_size: int) -> dict[str, float]:
    """mean, std, min, percentiles, max (ms) and throughput (items/s) of one latency sample."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    stats = {
        "mean": float(lat.mean()),
        "std": float(lat.std(ddof=1)) if len(lat) > 1 else 0.0,
        "min": float(lat.min()),
        **{name: float(np.percentile(lat, q)) for name, q in PERCENTILES.items()},
        "max": float(lat.max()),
        "iterations": len(lat),
        "batch_size": batch_size,
    }
    stats["throughput"] = batch_size * 1e3 / stats["mean"]
    return stats
