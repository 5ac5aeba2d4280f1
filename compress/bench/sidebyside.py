"""Compare several models' latency fairly on a noisy machine: interleave them in rounds.

Timing A for ten seconds and then B for ten seconds lets a neighbour's load land on one of them;
alternating short rounds (A B B A A B ...) spreads it over both, so their ratio holds.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from torch import nn

from compress.bench.backends import BackendOptions, load_runner
from compress.bench.timing import TimingPlan, summarize, time_calls
from compress.export.onnx import export_onnx


def interleaved_latency(
    calls: dict[str, Callable[[], object]],
    batch_size: int,
    rounds: int = 6,
    seconds_per_round: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Latency statistics per name, measured in alternating rounds after a warm-up of each."""
    warm = TimingPlan(warmup_iterations=5, warmup_seconds=0.3, min_iterations=1, min_seconds=0.0)
    for fn in calls.values():
        time_calls(fn, warm)
    plan = TimingPlan(
        warmup_iterations=1, warmup_seconds=0.0, min_iterations=5, min_seconds=seconds_per_round,
        max_seconds=max(5.0, 4 * seconds_per_round),
    )  # fmt: skip
    samples: dict[str, list[np.ndarray]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(time_calls(calls[name], plan))
    return {name: summarize(np.concatenate(s), batch_size) for name, s in samples.items()}


def onnx_side_by_side(
    paths: dict[str, Path],
    input_chw: tuple[int, ...],
    batch_sizes: Iterable[int],
    rounds: int = 10,
    threads: int | None = None,
) -> dict[int, dict[str, dict[str, float]]]:
    """onnxruntime latency of several ONNX files on one random batch, interleaved, per batch
    size: ``{batch_size: {name: stats}}``. Compare them by their p50s, robust to outliers."""
    runners = {
        name: load_runner("onnxruntime", p, BackendOptions(threads)) for name, p in paths.items()
    }
    out = {}
    for bs in batch_sizes:
        batch = np.random.default_rng(0).standard_normal((bs, *input_chw)).astype(np.float32)
        calls = {name: (lambda r=r, b=batch: r.call(b)) for name, r in runners.items()}
        out[bs] = interleaved_latency(calls, bs, rounds=rounds)
    return out


def models_side_by_side(
    models: dict[str, nn.Module], input_chw: tuple[int, int, int], batch_size: int
) -> dict[str, dict[str, float]]:
    """onnxruntime latency of in-memory PyTorch models, each exported to a temporary ONNX file
    (opset 18, free batch) and timed interleaved at ``batch_size``: ``{name: stats}``."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(tmp) / f"{name}.onnx" for name in models}
        for name, model in models.items():
            export_onnx(copy.deepcopy(model), paths[name], input_shape=input_chw, opset=18,
                        dynamic_batch=True, metadata={})  # fmt: skip
        return onnx_side_by_side(paths, input_chw, [batch_size])[batch_size]
