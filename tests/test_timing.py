"""Latency statistics on samples whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from compress.bench.timing import TimingPlan, summarize, time_calls


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
