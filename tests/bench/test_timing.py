"""Latency statistics on samples whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.bench.timing import TimingPlan, summarize, time_calls, time_cuda_calls


def test_percentiles_on_known_samples():
    samples = np.arange(1, 101, dtype=float)  # 1..100 ms
    stats = summarize(samples, batch_size=4)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert (stats["min"], stats["max"]) == (1.0, 100.0)
    assert stats["throughput"] == pytest.approx(4 * 1000 / 50.5)


def test_time_calls_honours_iteration_minimum():
    calls = []
    samples = time_calls(lambda: calls.append(1), TimingPlan(2, 0.0, 50, 0.0, 10.0))
    assert len(samples) == 50 and len(calls) == 52 and (samples >= 0).all()


def test_p99_9_and_std_on_known_samples():
    samples = np.arange(0, 1001, dtype=float)  # 0..1000 ms: percentile q is exactly 10 * q
    stats = summarize(samples, batch_size=1)
    assert stats["p99_9"] == pytest.approx(999.0)
    assert stats["p95"] == pytest.approx(950.0)
    assert stats["std"] == pytest.approx(np.std(samples, ddof=1))
    assert stats["iterations"] == 1001


def test_default_plan_makes_p99_more_than_the_max():
    plan = TimingPlan()
    assert plan.min_iterations >= 1000 and plan.min_seconds >= 3.0
    # with the minimum count, p99 sits among the 10 slowest calls, not on the slowest one
    samples = np.concatenate([np.ones(plan.min_iterations - 1), [100.0]])
    assert summarize(samples, 1)["p99"] < 100.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_event_timing_returns_gpu_milliseconds():
    x = torch.randn(256, 256, device="cuda")
    samples = time_cuda_calls(lambda: x @ x, TimingPlan(2, 0.0, 20, 0.0, 10.0))
    assert len(samples) == 20 and (samples > 0).all()
