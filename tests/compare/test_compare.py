"""Comparison grids: expansion into cells, and the tables computed from a manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from compress.compare.report import methods_table, sweep_table, write_compare_report
from compress.config.load import parse_pipeline
from compress.config.pipeline import find_producer
from compress.errors import ConfigError
from compress.manifest import Manifest
from tests.conftest import run_pipeline_dict, tiny_pipeline


def grid_pipeline(**grid):
    raw = tiny_pipeline()
    del raw["export"], raw["bench"]
    raw["grid"] = {"seeds": [0, 1], "methods": ["baseline", "kd"], **grid}
    return raw


def done(stage_type: str, top1: float, params: int) -> dict:
    """A finished manifest entry with the metrics the comparison tables read."""
    return {"type": stage_type, "status": "done", "metrics": {"top1": top1, "params": params}}


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


def test_method_blocks_with_a_label_name_their_cells():
    hints = [{"name": "fitnets", "hint_weight": w, "label": f"fitnets-h{w}"} for w in (10, 100)]
    stages = dict(parse_pipeline(grid_pipeline(seeds=[0], methods=hints)).stage_items())
    assert list(stages) == ["teacher", "distill-fitnets-h10-s0", "distill-fitnets-h100-s0"]
    assert stages["distill-fitnets-h10-s0"].method.hint_weight == 10
    with pytest.raises(ConfigError, match=r"label 'h 1\.0'.*letters, digits"):
        parse_pipeline(grid_pipeline(methods=[{"name": "kd", "label": "h 1.0"}]))


def test_teacher_size_sweep_adds_a_teacher_stage_per_new_model_and_cells_reading_it():
    raw = grid_pipeline(seeds=[0], teachers=["resnet18", {"label": "r34", "arch": "resnet34"}])
    raw["distill"]["method"] = {"name": "kd", "temperature": 2.0}
    stages = dict(parse_pipeline(raw).stage_items())
    assert list(stages) == ["teacher", "distill-baseline-s0", "distill-kd-s0", "teacher-r34",
                            "distill-teacher-resnet18-s0", "distill-teacher-r34-s0"]  # fmt: skip
    assert stages["teacher-r34"].model.arch == "resnet34"
    assert stages["teacher-r34"].model.stem == "compact"  # the rest of the teacher's model block
    assert stages["distill-kd-s0"].input == "teacher"  # named: not the sweep's newer teacher
    r18, r34 = stages["distill-teacher-resnet18-s0"], stages["distill-teacher-r34-s0"]
    assert (r18.input, r34.input) == ("teacher", "teacher-r34")  # resnet18 is the teacher itself
    assert r34.method.name == "kd" and r34.method.temperature == 2.0  # the template's kd block


def test_teacher_size_sweep_with_label_counts_keeps_the_cells_on_the_pipelines_teacher():
    # grid.labels puts every teacher stage before every cell: a cell that left its teacher to
    # "the last one before it" distilled from the sweep's resnet50 instead (found in a real run)
    raw = grid_pipeline(seeds=[0], teachers=["resnet50"], labels=[100], unlabeled=[True])
    items = parse_pipeline(raw).stage_items()
    assert [n for n, _ in items][:2] == ["teacher", "teacher-resnet50"]
    producers = {name: find_producer(items[:i], "teacher", cfg.input)
                 for i, (name, cfg) in enumerate(items) if cfg.type == "distill"}  # fmt: skip
    assert producers == {"labels100.distill-baseline-s0": "teacher",
                         "labels100.distill-kd-s0": "teacher",
                         "labels100.distill-teacher-resnet50-s0": "teacher-resnet50"}  # fmt: skip


def test_label_counts_keep_the_cells_on_the_teacher_before_the_template():
    # the same drift without a sweep: a second teacher stage after the distill block moves
    # before the cells with grid.labels, and would have become their "last teacher before"
    raw = grid_pipeline(seeds=[0], labels=[100])
    raw["big_teacher"] = {"type": "teacher", "model": {"arch": "resnet34"}, "epochs": 1}
    items = parse_pipeline(raw).stage_items()
    producers = {find_producer(items[:i], "teacher", cfg.input)
                 for i, (name, cfg) in enumerate(items) if cfg.type == "distill"}  # fmt: skip
    assert producers == {"teacher"}


def test_teacher_size_sweep_errors():
    with pytest.raises(ConfigError, match="two entries are labelled 'resnet34'"):
        parse_pipeline(grid_pipeline(teachers=["resnet34", {"arch": "resnet34", "stem": "cifar"}]))
    raw = grid_pipeline(teachers=["resnet34"])
    del raw["teacher"]
    with pytest.raises(ConfigError, match="does not distil from a teacher stage"):
        parse_pipeline(raw)


def test_teacher_table_pairs_each_teacher_with_its_students(tmp_path: Path, monkeypatch):
    import compress.compare.report as report

    monkeypatch.setattr(report, "teacher_entropy", lambda m, ts, d=None: {t: 1.0 for t in ts})
    raw = grid_pipeline(teachers=["resnet18", "resnet34"])
    config = parse_pipeline(raw).model_dump(mode="json")
    stages = {"teacher": done("teacher", 0.90, 11_000_000),
              "teacher-resnet34": done("teacher", 0.92, 21_000_000)}  # fmt: skip
    stages["teacher-resnet34"]["metrics"].update(epochs=4, train_loss=0.125)
    accuracies = {"baseline": 0.80, "kd": 0.85, "teacher-resnet18": 0.85, "teacher-resnet34": 0.86}
    for label, top1 in accuracies.items():
        for seed in (0, 1):
            stages[f"distill-{label}-s{seed}"] = done("distill", top1 + seed / 100, 2)
    manifest = Manifest(tmp_path, {"pipeline": {"config": config}, "stages": stages})
    rows = report.teacher_table(manifest)
    assert [(r["teacher"], r["arch"], r["teacher_top1"]) for r in rows] == [
        ("resnet18", "resnet18", 0.90), ("resnet34", "resnet34", 0.92)]  # fmt: skip
    assert [r["top1_mean"] for r in rows] == pytest.approx([0.855, 0.865])
    assert [r["gain_vs_baseline"] for r in rows] == pytest.approx([0.05, 0.06])
    assert [(r["teacher_epochs"], r["teacher_train_loss"]) for r in rows] == [
        (None, None),
        (4, 0.125),
    ]
    assert [r["method"] for r in methods_table(manifest)] == ["teacher", "kd", "baseline"]
    written = {p.name for p in write_compare_report(manifest)}
    assert {"teachers.md", "teachers.csv", "teachers.png"} <= written
    assert "| 4 | 0.125 |" in (tmp_path / "compare" / "teachers.md").read_text()


def test_teacher_table_takes_the_pipelines_teacher_from_the_matching_method_cell(tmp_path: Path):
    import compress.compare.report as report

    def table(template_method: dict) -> list[tuple]:
        raw = grid_pipeline(teachers=["resnet34"])
        raw["distill"]["method"] = template_method
        config = parse_pipeline(raw).model_dump(mode="json")
        stages = {"teacher": done("teacher", 0.90, 11_000_000),
                  "teacher-resnet34": done("teacher", 0.92, 21_000_000)}  # fmt: skip
        for label, top1 in {"baseline": 0.80, "kd": 0.85, "teacher-resnet34": 0.87}.items():
            for seed in (0, 1):
                stages[f"distill-{label}-s{seed}"] = done("distill", top1 + seed / 100, 2)
        rows = report.teacher_table(Manifest(tmp_path, {"pipeline": {"config": config},
                                                        "stages": stages}))  # fmt: skip
        return [(r["teacher"], r["teacher_top1"], round(r["top1_mean"], 4)) for r in rows]

    # the sweep's kd block is the kd cell's: the pipeline's teacher (resnet18) is not run twice
    assert table({"name": "kd"}) == [("resnet18", 0.90, 0.855), ("resnet34", 0.92, 0.875)]
    # another temperature in the template: the kd cell is a different experiment, left out
    assert table({"name": "kd", "temperature": 2.0}) == [("resnet34", 0.92, 0.875)]


def fake_manifest(tmp_path: Path) -> Manifest:
    pipeline = parse_pipeline(grid_pipeline(temperatures=[2.0], alphas=[0.9]))
    config = pipeline.model_dump(mode="json")
    accuracies = {
        "baseline": (0.80, 0.82),
        "kd": (0.85, 0.87),
        "T2": (0.83, 0.83),
        "a0.9": (0.81, 0.83),
    }
    stages = {"teacher": done("teacher", 0.90, 21_000_000)}
    for label, values in accuracies.items():
        for seed, top1 in enumerate(values):
            stages[f"distill-{label}-s{seed}"] = done("distill", top1, 2_000_000)
    return Manifest(tmp_path, {"pipeline": {"config": config}, "stages": stages})


def test_methods_table_ranks_and_reports_mean_std_gain(tmp_path: Path):
    rows = methods_table(fake_manifest(tmp_path))
    assert [r["method"] for r in rows] == ["teacher", "kd", "baseline"]
    kd = rows[1]
    assert kd["top1_mean"] == pytest.approx(0.86)  # a fraction, like the manifest's top1
    assert kd["top1_std"] == pytest.approx(0.0141421, rel=1e-4)  # sample std of .85 and .87
    assert kd["gain_vs_baseline"] == pytest.approx(0.05)


def test_methods_table_reports_validation_accuracy_when_cells_have_a_split(
    tmp_path: Path, monkeypatch
):
    import compress.compare.report as report

    monkeypatch.setattr(report, "teacher_entropy", lambda m, ts, d=None: {t: 1.0 / t for t in ts})
    manifest = fake_manifest(tmp_path)
    for seed, val in enumerate((0.70, 0.74)):
        manifest.stages[f"distill-kd-s{seed}"]["metrics"]["val_top1"] = val
    rows = {r["method"]: r for r in methods_table(manifest)}
    assert rows["kd"]["val_top1_mean"] == pytest.approx(0.72)
    assert rows["kd"]["val_top1_std"] == pytest.approx(0.0282843, rel=1e-4)
    assert "val_top1_mean" not in rows["baseline"]  # its cells have no split
    write_compare_report(manifest)
    table = (tmp_path / "compare" / "methods.md").read_text()
    assert "| val_top1_mean | val_top1_std |" in table  # though the teacher row comes first
    assert "| 72.00% | ±2.83 |" in table
    cells = json.loads((tmp_path / "compare" / "cells.json").read_text())["stages"]
    assert cells["distill-kd-s1"]["val_top1"] == 0.74
    assert "val_top1" not in cells["distill-baseline-s0"]


def test_sweeps_include_the_matching_method_cell(tmp_path: Path):
    manifest = fake_manifest(tmp_path)
    temperature = sweep_table(manifest, "temperature")
    assert [(r["temperature"], r["seeds"]) for r in temperature] == [(2.0, 2), (4.0, 2)]
    alpha = sweep_table(manifest, "alpha")
    assert [(r["alpha"], round(r["top1_mean"], 4)) for r in alpha] == [(0.5, 0.86), (0.9, 0.82)]


def test_report_files(tmp_path: Path, monkeypatch):
    import compress.compare.report as report

    monkeypatch.setattr(report, "teacher_entropy", lambda m, ts, d=None: {t: 1.0 / t for t in ts})
    written = {p.name for p in write_compare_report(fake_manifest(tmp_path))}
    assert {"methods.md", "methods.csv", "temperature.md", "alpha.csv", "methods.png",
            "temperature.png", "alpha.png"} <= written  # fmt: skip
    with open(tmp_path / "compare" / "methods.csv") as f:
        assert [row["method"] for row in csv.DictReader(f)] == ["teacher", "kd", "baseline"]
    assert (tmp_path / "compare" / "methods.png").read_bytes()[:4] == b"\x89PNG"


def two_dataset_grid() -> dict:
    raw = grid_pipeline()
    raw["grid"]["datasets"] = [
        "fashion-mnist",
        {"label": "fmnist-small", "dataset": "fashion-mnist", "train_subset": 64},
    ]
    raw["distill"]["teachers"] = ["teacher"]
    return raw


def test_grid_datasets_copy_every_stage_per_dataset_with_its_data_block():
    pipeline = parse_pipeline(two_dataset_grid())
    stages = dict(pipeline.stage_items())
    assert list(stages) == [
        f"{d}.{n}"
        for d in ("fashion-mnist", "fmnist-small")
        for n in ("teacher", "distill-baseline-s0", "distill-baseline-s1", "distill-kd-s0",
                  "distill-kd-s1")
    ]  # fmt: skip
    small = stages["fmnist-small.distill-kd-s1"]
    assert small.data.train_subset == 64 and small.data.image_size == 16  # entry + pipeline's
    assert stages["fashion-mnist.teacher"].data.train_subset == 256
    assert small.teachers == ["fmnist-small.teacher"] and small.input == "fmnist-small.teacher"


def test_grid_dataset_labels_must_be_distinct():
    raw = grid_pipeline()
    raw["grid"]["datasets"] = ["fashion-mnist", {"dataset": "fashion-mnist", "train_subset": 9}]
    with pytest.raises(ConfigError, match="two entries are labelled 'fashion-mnist'"):
        parse_pipeline(raw)


def test_report_writes_one_table_per_dataset(tmp_path: Path, monkeypatch):
    import compress.compare.report as report

    monkeypatch.setattr(report, "teacher_entropy", lambda m, ts, d=None: {t: 1.0 for t in ts})
    config = parse_pipeline(two_dataset_grid()).model_dump(mode="json")
    accuracies = {"fashion-mnist": {"baseline": 0.80, "kd": 0.85},
                  "fmnist-small": {"baseline": 0.70, "kd": 0.60}}  # fmt: skip
    stages = {}
    for dataset, by_method in accuracies.items():
        stages[f"{dataset}.teacher"] = done("teacher", 0.9, 1)
        for method, top1 in by_method.items():
            for seed in (0, 1):
                stages[f"{dataset}.distill-{method}-s{seed}"] = done(
                    "distill", top1 + seed / 100, 2
                )
    manifest = Manifest(tmp_path, {"pipeline": {"config": config}, "stages": stages})
    assert [r["method"] for r in methods_table(manifest, "fmnist-small")] == [
        "teacher", "baseline", "kd"]  # fmt: skip
    write_compare_report(manifest)
    for dataset, by_method in accuracies.items():
        with open(tmp_path / "compare" / dataset / "methods.csv") as f:
            rows = {row["method"]: float(row["top1_mean"]) for row in csv.DictReader(f)}
        expected = {"teacher": 0.90, **{m: a + 0.005 for m, a in by_method.items()}}
        assert rows == pytest.approx(expected)
        assert f"on {dataset}" in (tmp_path / "compare" / dataset / "methods.md").read_text()


def write_imagefolder(root: Path) -> Path:
    """Three classes of 16x16 PNGs (dark, mid, bright) in train/ and test/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for level, name in ((40, "dark"), (128, "mid"), (215, "bright")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(level, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def fake_fashion_grid(name: str, root: Path, **grid) -> dict:
    """A grid pipeline of tiny MobileNetV2s on the ``fake_fashion`` files, quick through the CLI."""
    return {
        "name": name,
        "data": {"dataset": "fashion-mnist", "root": str(root), "download": False,
                 "image_size": 16, "channels": 1, "batch_size": 16},
        "teacher": {"model": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none"},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none", "method": "kd"},
        "grid": grid,
    }  # fmt: skip


def test_a_grid_over_two_datasets_through_compress_run(fake_fashion, tmp_path: Path):
    """Fashion-MNIST-format data (random images) and a tiny 3-class image folder: each gets its
    own teacher, its own cells and its own tables."""
    shapes = write_imagefolder(tmp_path / "shapes")
    pipeline = fake_fashion_grid(
        "two_datasets", fake_fashion,
        seeds=[0], methods=["baseline", "kd"],
        teachers=["mobilenet_v2", {"label": "wide", "width_mult": 0.5}],
        datasets=["fashion-mnist",
                  {"label": "shapes", "dataset": "imagefolder", "root": str(shapes)}],
    )  # fmt: skip
    _, stages = run_pipeline_dict(pipeline, tmp_path)
    assert stages["shapes.distill-kd-s0"]["inputs"]["teacher"]["stage"] == "shapes.teacher"
    assert stages["shapes.teacher"]["metrics"]["test_images"] == 18  # 3 classes x 6
    assert stages["fashion-mnist.teacher"]["metrics"]["test_images"] == 20
    wide = stages["shapes.distill-teacher-wide-s0"]["inputs"]["teacher"]["stage"]
    assert wide == "shapes.teacher-wide"
    assert stages["shapes.teacher-wide"]["metrics"]["params"] > stages["shapes.teacher"][
        "metrics"]["params"]  # fmt: skip
    for dataset in ("fashion-mnist", "shapes"):
        with open(tmp_path / "run" / "compare" / dataset / "methods.csv") as f:
            assert {row["method"] for row in csv.DictReader(f)} == {"teacher", "baseline", "kd"}
        with open(tmp_path / "run" / "compare" / dataset / "teachers.csv") as f:
            assert [row["teacher"] for row in csv.DictReader(f)] == ["mobilenet_v2", "wide"]
    cells = json.loads((tmp_path / "run" / "compare" / "cells.json").read_text())
    assert cells["command"].startswith("compress run ") and "--run-dir" in cells["command"]
    assert set(cells["stages"]) == set(stages)
    wide_cell = cells["stages"]["shapes.distill-teacher-wide-s0"]
    assert wide_cell["teacher"] == "shapes.teacher-wide"
    assert wide_cell["top1"] == stages["shapes.distill-teacher-wide-s0"]["metrics"]["top1"]
    assert wide_cell["host"]["cores"] >= 1 and "cpu" in wide_cell["host"]
    assert wide_cell["train_loss"] == stages["shapes.distill-teacher-wide-s0"]["metrics"][
        "train_loss"]  # fmt: skip


def test_a_narrower_grid_shelves_the_other_cells_and_the_full_grid_reuses_them(
    fake_fashion, tmp_path: Path
):
    """A grid run in parts (``--set grid.seeds=[0]``, then the whole file) does not re-train
    what an earlier, wider run finished: the left-out cells wait in ``shelved``."""
    pipeline = fake_fashion_grid("parts", fake_fashion, seeds=[0, 1], methods=["baseline"])
    _, wide = run_pipeline_dict(pipeline, tmp_path)
    pipeline["grid"]["seeds"] = [0]
    _, narrow = run_pipeline_dict(pipeline, tmp_path)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert list(narrow) == ["teacher", "distill-baseline-s0"]
    assert list(manifest["shelved"]) == ["distill-baseline-s1"]
    with open(tmp_path / "run" / "compare" / "methods.csv") as f:
        assert [row["seeds"] for row in csv.DictReader(f) if row["method"] == "baseline"] == ["1"]
    pipeline["grid"]["seeds"] = [0, 1]
    out, again = run_pipeline_dict(pipeline, tmp_path)
    assert "distill-baseline-s1: unchanged, skipped" in out
    assert again["distill-baseline-s1"] == wide["distill-baseline-s1"]
    assert "shelved" not in json.loads((tmp_path / "run" / "manifest.json").read_text())
