"""Comparison grids: expansion into cells, and the tables computed from a manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from compress.compare.report import methods_table, sweep_table, write_compare_report
from compress.config.load import parse_pipeline
from compress.errors import ConfigError
from compress.manifest import Manifest
from tests.conftest import tiny_pipeline


def grid_pipeline(**grid):
    raw = tiny_pipeline()
    del raw["export"], raw["bench"]
    raw["grid"] = {"seeds": [0, 1], "methods": ["baseline", "kd"], **grid}
    return raw


def test_grid_expands_into_one_stage_per_cell_sharing_the_teacher():
    pipeline = parse_pipeline(grid_pipeline(temperatures=[2.0], alphas=[0.9]))
    names = [n for n, _ in pipeline.stage_items()]
    assert names == ["teacher", "distill-baseline-s0", "distill-baseline-s1", "distill-kd-s0",
                     "distill-kd-s1", "distill-T2-s0", "distill-T2-s1", "distill-a0.9-s0",
                     "distill-a0.9-s1"]  # fmt: skip
    stages = dict(pipeline.stage_items())
    assert stages["distill-kd-s1"].seed == 1
    assert stages["distill-T2-s0"].method.temperature == 2.0
    assert stages["distill-a0.9-s0"].method.alpha == 0.9
    assert stages["distill-baseline-s0"].epochs == 1  # the template's training settings


def test_grid_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"grid\.seeds"):
        parse_pipeline(grid_pipeline(seeds=[]))
    with pytest.raises(ConfigError, match=r"grid\.template: no distill stage named 'student'"):
        parse_pipeline(grid_pipeline(template="student"))
    with pytest.raises(ConfigError, match="unknown name 'kdd'"):
        parse_pipeline(grid_pipeline(methods=["kdd"]))


def fake_manifest(tmp_path: Path) -> Manifest:
    pipeline = parse_pipeline(grid_pipeline(temperatures=[2.0], alphas=[0.9]))
    config = pipeline.model_dump(mode="json")
    accuracies = {
        "baseline": (0.80, 0.82),
        "kd": (0.85, 0.87),
        "T2": (0.83, 0.83),
        "a0.9": (0.81, 0.83),
    }
    stages = {"teacher": {"type": "teacher", "status": "done",
                          "metrics": {"top1": 0.90, "params": 21_000_000}}}  # fmt: skip
    for label, values in accuracies.items():
        for seed, top1 in enumerate(values):
            metrics = {"top1": top1, "params": 2_000_000}
            stages[f"distill-{label}-s{seed}"] = {
                "type": "distill",
                "status": "done",
                "metrics": metrics,
            }
    return Manifest(tmp_path, {"pipeline": {"config": config}, "stages": stages})


def test_methods_table_ranks_and_reports_mean_std_gain(tmp_path: Path):
    rows = methods_table(fake_manifest(tmp_path))
    assert [r["method"] for r in rows] == ["teacher", "kd", "baseline"]
    kd = rows[1]
    assert kd["top1_mean"] == pytest.approx(86.0)
    assert kd["top1_std"] == pytest.approx(1.41421, rel=1e-4)  # sample std of 85 and 87
    assert kd["gain_vs_baseline"] == pytest.approx(5.0)


def test_sweeps_include_the_matching_method_cell(tmp_path: Path):
    manifest = fake_manifest(tmp_path)
    temperature = sweep_table(manifest, "temperature")
    assert [(r["temperature"], r["seeds"]) for r in temperature] == [(2.0, 2), (4.0, 2)]
    alpha = sweep_table(manifest, "alpha")
    assert [(r["alpha"], round(r["top1_mean"], 2)) for r in alpha] == [(0.5, 86.0), (0.9, 82.0)]


def test_report_files(tmp_path: Path, monkeypatch):
    import compress.compare.report as report

    monkeypatch.setattr(report, "teacher_entropy", lambda m, ts: {t: 1.0 / t for t in ts})
    written = {p.name for p in write_compare_report(fake_manifest(tmp_path))}
    assert {"methods.md", "methods.csv", "temperature.md", "alpha.csv", "methods.png",
            "temperature.png", "alpha.png"} <= written  # fmt: skip
    with open(tmp_path / "compare" / "methods.csv") as f:
        assert [row["method"] for row in csv.DictReader(f)] == ["teacher", "kd", "baseline"]
    assert (tmp_path / "compare" / "methods.png").read_bytes()[:4] == b"\x89PNG"
