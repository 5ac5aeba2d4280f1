"""Cached teacher outputs: with fixed inputs a feature method reads the frozen teacher's tapped
layers from the run's cache instead of running the teacher every step, and trains the same."""

from __future__ import annotations

import pytest
import torch

from compress.config.base import TrainConfig
from compress.distill import load_methods
from compress.distill import train as train_module
from compress.io import load_torch
from tests.distill.tiny_run import distil, save_teacher

load_methods()
FITNETS = {"name": "fitnets", "pairs": [{"student": "features.3", "teacher": "features.5"}]}


def test_fitnets_from_cached_teacher_features_trains_like_a_live_teacher(fake_fashion, tmp_path):
    torch.manual_seed(0)
    save_teacher(fake_fashion)
    train = TrainConfig(epochs=2, lr=0.01, augment="none")
    runs = {
        name: distil(fake_fashion, tmp_path / name, FITNETS, train, cache_teacher=name == "cached",
                     labels_per_class=2, unlabeled="rest").state_dict()
        for name in ("live", "cached")
    }  # fmt: skip
    live, cached = runs["live"], runs["cached"]
    assert not (tmp_path / "live" / "cache").exists()
    (cache_file,) = (tmp_path / "cached" / "cache").glob("teacher_logits-*.pt")
    stored = load_torch(cache_file)
    # 20 labelled rows (2 per class) then the 40 others as unlabeled rows
    assert stored["logits"].shape == (60, 10)
    assert stored["features"]["features.5"].shape[0] == 60
    for name, value in live.items():
        if value.is_floating_point():
            torch.testing.assert_close(cached[name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("method", "loads_on_a_hit"), [({"name": "kd"}, 0), (FITNETS, 1)])
def test_a_cache_hit_does_not_build_the_teacher(fake_fashion, tmp_path, monkeypatch, method,
                                                loads_on_a_hit):  # fmt: skip
    """The cached outputs stand in for the teacher: with them on disk a logits method never
    reads the teacher file; a feature method builds it once, to probe its layers' shapes."""
    save_teacher(fake_fashion)
    loads = []
    real = train_module.load_teacher
    monkeypatch.setattr(train_module, "load_teacher",
                        lambda path, device: loads.append(path) or real(path, device))  # fmt: skip
    train = TrainConfig(epochs=1, lr=0.01, augment="none")
    for run in ("first", "second"):
        distil(fake_fashion, tmp_path / run, method, train, cache=tmp_path / "cache")
        if run == "first":
            assert len(loads) == 1  # built once: to fill the cache (and probe, for fitnets)
            loads.clear()
    assert len(loads) == loads_on_a_hit


def test_rows_of_cached_logits_and_features_match_plain_indexing():
    """A step's rows: dim -2 of (teachers x images x classes) logits, dim 0 of features."""
    stacked, features = torch.randn(2, 50, 10), torch.randn(50, 4, 3, 3)
    rows = torch.tensor([7, 0, 49, 7])
    cpu = torch.device("cpu")
    assert torch.equal(train_module.take_rows(stacked, 1, rows, cpu), stacked[:, rows])
    assert torch.equal(train_module.take_rows(stacked[0], 0, rows, cpu), stacked[0][rows])
    assert torch.equal(train_module.take_rows(features, 0, rows, cpu), features[rows])
    assert train_module.resident([features], cpu)[0] is features  # a CPU run leaves them be
