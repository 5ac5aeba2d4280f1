"""Few-label experiments: a stratified labelled subset, the rest as unlabeled images, budgets
in steps, grids over label counts, and their report (intervals, the label curve)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from compress.compare.report import methods_table, welch_interval, write_compare_report
from compress.config.base import DataConfig, TrainConfig
from compress.config.load import parse_pipeline
from compress.data.module import UNLABELED, DataModule
from compress.errors import ConfigError, DataError
from compress.manifest import Manifest
from compress.train.optim import lr_factor, total_epochs, total_steps
from tests.conftest import run_pipeline_dict, tiny_pipeline


def fake_data(root: Path, **keys) -> DataModule:
    cfg = DataConfig(dataset="fashion-mnist", root=root, download=False, image_size=16, **keys)
    return DataModule(cfg, seed=0)


def test_labels_per_class_is_a_stratified_draw_fixed_by_the_seed(fake_fashion: Path):
    data = fake_data(fake_fashion, labels_per_class=3, val_split=0.2)
    labelled = torch.cat([data.train.labels, data.val.labels])
    assert torch.bincount(labelled, minlength=10).tolist() == [3] * 10
    assert (len(data.train), len(data.val)) == (24, 6)  # the val split comes from the labelled
    again = fake_data(fake_fashion, labels_per_class=3, val_split=0.2)
    assert torch.equal(again.train.images, data.train.images)
    other = DataModule(data.cfg, seed=1)
    assert not torch.equal(other.train.images, data.train.images)
    with pytest.raises(DataError, match=r"class '.*' has 6 training images"):
        fake_data(fake_fashion, labels_per_class=7)


def test_unlabeled_rest_is_every_training_image_left_out_labels_dropped(fake_fashion: Path):
    data = fake_data(fake_fashion, labels_per_class=2, unlabeled="rest", val_split=0.1)
    assert len(data.train) + len(data.val) + len(data.unlabeled) == 60
    assert (data.unlabeled.labels == UNLABELED).all()
    used = torch.cat([data.train.images, data.val.images]).flatten(1)
    rest = data.unlabeled.images.flatten(1)
    assert not (used[:, None] == rest[None]).all(-1).any()  # no labelled image is reused
    assert len(fake_data(fake_fashion, train_subset=50, unlabeled="rest").unlabeled) == 10
    # with labels_per_class, train_subset is the pool: the rest is the pool's unlabelled part
    pooled = fake_data(fake_fashion, train_subset=40, labels_per_class=1, unlabeled="rest")
    assert (len(pooled.train), len(pooled.unlabeled)) == (10, 30)


def test_unlabeled_rest_needs_a_labelled_subset():
    with pytest.raises(ValueError, match="unlabeled: rest needs labels_per_class"):
        DataConfig(unlabeled="rest")
    assert DataConfig(unlabeled="rest", labels_per_class=5).model_dump(mode="json")[
        "unlabeled"] == "rest"  # fmt: skip


def test_steps_set_the_budget_and_the_schedule_whatever_the_split_size():
    cfg = TrainConfig(steps=10, epochs=99, schedule="cosine")
    assert (total_steps(cfg, 3), total_epochs(cfg, 3)) == (10, 4)  # the 4th epoch stops part-way
    assert (total_steps(TrainConfig(epochs=2), 3), total_epochs(TrainConfig(epochs=2), 3)) == (6, 2)
    assert lr_factor(9, cfg, 3) < 0.05 < lr_factor(4, cfg, 3)  # the cosine ends at step 10


def few_label_grid(**grid) -> dict:
    raw = tiny_pipeline()
    del raw["export"], raw["bench"]
    raw["grid"] = {"seeds": [0, 1], "methods": ["baseline", "kd"], "labels": [5, "all"], **grid}
    return raw


def test_grid_labels_copy_the_cells_not_the_teacher():
    stages = dict(parse_pipeline(few_label_grid(unlabeled=[False, True])).stage_items())
    assert list(stages) == [
        "teacher",
        "labels5.distill-baseline-s0", "labels5.distill-kd-s0", "labels5.distill-kd+unlabeled-s0",
        "labels5.distill-baseline-s1", "labels5.distill-kd-s1", "labels5.distill-kd+unlabeled-s1",
        "labels-all.distill-baseline-s0", "labels-all.distill-kd-s0",
        "labels-all.distill-baseline-s1", "labels-all.distill-kd-s1"]  # fmt: skip
    assert stages["teacher"].data is None  # the teacher keeps every label
    kd_u = stages["labels5.distill-kd+unlabeled-s1"]
    assert (kd_u.data.labels_per_class, kd_u.data.unlabeled, kd_u.seed) == (5, "rest", 1)
    assert stages["labels5.distill-kd-s0"].data.unlabeled is None
    assert stages["labels-all.distill-kd-s0"].data.labels_per_class is None
    assert stages["labels5.distill-kd-s0"].data.train_subset == 256  # the pipeline's data block


def test_grid_labels_keep_the_templates_own_data_block():
    raw = few_label_grid(labels=[5], unlabeled=[False, True], seeds=[0])
    raw["distill"]["data"] = {**raw["data"], "val_split": 0.2}  # the cells' validation split
    stages = dict(parse_pipeline(raw).stage_items())
    assert stages["teacher"].data is None  # the teacher trains on every image, no split
    for cell in ("labels5.distill-kd-s0", "labels5.distill-kd+unlabeled-s0"):
        data = stages[cell].data
        assert (data.val_split, data.labels_per_class, data.train_subset) == (0.2, 5, 256)


def test_grid_unlabeled_true_alone_keeps_the_cell_names_for_the_sweeps():
    raw = few_label_grid(labels=[5], unlabeled=[True], seeds=[0], temperatures=[2.0])
    stages = dict(parse_pipeline(raw).stage_items())
    assert list(stages) == ["teacher", "labels5.distill-baseline-s0", "labels5.distill-kd-s0",
                            "labels5.distill-T2-s0"]  # fmt: skip
    assert stages["labels5.distill-T2-s0"].data.unlabeled == "rest"
    assert stages["labels5.distill-baseline-s0"].data.unlabeled is None  # no teacher to use them


def test_grid_labels_errors():
    with pytest.raises(ConfigError, match="cannot be combined"):
        parse_pipeline(few_label_grid(datasets=["fashion-mnist"]))
    with pytest.raises(ConfigError, match=r"needs grid\.labels"):
        parse_pipeline(few_label_grid(labels=["all"], unlabeled=[True]))


def test_welch_interval_matches_a_hand_computed_value():
    # means 86 and 81, variances 1 and 1 over 3 each: se = sqrt(2/3), df = 4, t(0.975, 4)=2.7764
    low, high = welch_interval([85.0, 86.0, 87.0], [80.0, 81.0, 82.0])
    assert (low, high) == pytest.approx((5 - 2.7764 * (2 / 3) ** 0.5, 5 + 2.7764 * (2 / 3) ** 0.5),
                                        abs=1e-3)  # fmt: skip
    assert welch_interval([85.0], [80.0, 81.0]) is None


def test_labels_report_tables_and_curve(tmp_path: Path, monkeypatch):
    config = parse_pipeline(few_label_grid(unlabeled=[False, True])).model_dump(mode="json")
    stages = {"teacher": {"type": "teacher", "status": "done",
                          "metrics": {"top1": 0.9, "params": 1}}}  # fmt: skip
    accuracies = {"labels5": {"baseline": 0.60, "kd": 0.62, "kd+unlabeled": 0.80},
                  "labels-all": {"baseline": 0.88, "kd": 0.89}}  # fmt: skip
    for scope, by_method in accuracies.items():
        for method, top1 in by_method.items():
            for seed in (0, 1):
                stages[f"{scope}.distill-{method}-s{seed}"] = {
                    "type": "distill", "status": "done",
                    "metrics": {"top1": top1 + seed / 100, "params": 2}}  # fmt: skip
    manifest = Manifest(tmp_path, {"pipeline": {"config": config}, "stages": stages})
    rows = methods_table(manifest, "labels5")
    assert [r["method"] for r in rows] == ["teacher", "kd+unlabeled", "kd", "baseline"]
    assert rows[1]["gain_vs_baseline"] == pytest.approx(0.20)  # fractions, like the manifest
    # 2 seeds each, spread 0.0071: se 0.0071, Welch df 2, t(0.975, 2) = 4.303
    assert rows[1]["gain_ci95"] == pytest.approx((0.20 - 0.030426, 0.20 + 0.030426), abs=1e-5)
    assert rows[-1]["gain_ci95"] is None  # the baseline itself
    import compress.compare.report as report

    plotted = {}
    save = report._save

    def keep_labels_plot(fig, path):
        if path.name == "labels.png":
            ax = fig.axes[0]
            plotted.update({line.get_label(): list(line.get_ydata()) for line in ax.get_lines()})
            plotted.update({bars.get_label(): list(bars.lines[0].get_ydata())
                            for bars in ax.containers})  # fmt: skip
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep_labels_plot)
    written = {
        p.relative_to(tmp_path / "compare").as_posix() for p in write_compare_report(manifest)
    }
    assert {"labels5/methods.md", "labels-all/methods.md", "labels.csv", "labels.png"} <= written
    # the curve and the reference lines on one percent axis (top-1 is a fraction in the rows)
    assert plotted["teacher"] == pytest.approx([90.0, 90.0])
    assert plotted["baseline, all labels"] == pytest.approx([88.5, 88.5])
    assert plotted["kd+unlabeled"] == pytest.approx([80.5])  # mean of 0.80 and 0.81
    with open(tmp_path / "compare" / "labels.csv") as f:
        table = [(r["labels_per_class"], r["method"]) for r in csv.DictReader(f)]
    assert ("5", "kd+unlabeled") in table and ("all", "baseline") in table


def test_few_labels_through_compress_run(fake_fashion: Path, tmp_path: Path):
    """2 labels per class from 60 random images (4 of them the validation split), the other 40
    unlabeled, 3 steps per cell."""
    pipeline = {
        "name": "few",
        "data": {"dataset": "fashion-mnist", "root": str(fake_fashion), "download": False,
                 "image_size": 16, "batch_size": 8, "val_split": 0.2},
        "teacher": {"model": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none"},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "steps": 3,
                    "augment": "none", "method": "kd"},
        "grid": {"seeds": [0], "methods": ["baseline", "kd"], "labels": [2],
                 "unlabeled": [False, True]},
    }  # fmt: skip
    out, stages = run_pipeline_dict(pipeline, tmp_path)
    assert "+ 8 of 40 unlabeled images a step" in out
    run = tmp_path / "run"
    import json

    for cell in ("labels2.distill-baseline-s0", "labels2.distill-kd+unlabeled-s0"):
        history = json.loads((run / stages[cell]["artifacts"]["history"]["path"]).read_text())
        assert len(history) == 2  # 16 labelled / 8 = 2 steps an epoch: 3 steps = 2 epochs
        assert 0.0 <= stages[cell]["metrics"]["val_top1"] <= 1.0  # the kept weights on val
    assert (run / "compare" / "labels.png").read_bytes()[:4] == b"\x89PNG"
    assert "val_top1_mean" in (run / "compare" / "labels2" / "methods.md").read_text()


def test_the_shipped_few_label_pipelines_validate_with_equal_budgets():
    from compress.config.load import load_pipeline
    from tests.conftest import ROOT

    stages = dict(load_pipeline(ROOT / "pipelines" / "compare_few_labels.yaml").stage_items())
    cells = {n: s for n, s in stages.items() if s.type == "distill"}
    assert len(cells) == 2 * (5 + 6 * 2 * 5) + 7 * 5  # 100 / 500 per class (+unlabeled), all
    assert {s.steps for s in cells.values()} == {469}
    assert stages["teacher"].data is None and stages["teacher"].model.arch == "resnet34"
    kd_u = cells["labels100.distill-kd+unlabeled-s4"]
    assert (kd_u.data.labels_per_class, kd_u.data.unlabeled) == (100, "rest")
    sweeps = load_pipeline(ROOT / "pipelines" / "compare_few_labels_sweeps.yaml")
    names = [n for n, _ in sweeps.stage_items()]
    assert {"teacher-resnet18", "teacher-resnet50", "labels100.distill-T8-s4",
            "labels100.distill-teacher-resnet50-s0"} <= set(names)  # fmt: skip


def test_the_shipped_tuning_pipeline_holds_out_a_validation_split_from_the_labels():
    from compress.config.load import load_pipeline
    from tests.conftest import ROOT

    stages = dict(load_pipeline(ROOT / "pipelines" / "tune_few_labels.yaml").stage_items())
    assert stages["teacher"].data is None  # every training image, as in compare_few_labels
    cells = {n: s for n, s in stages.items() if s.type == "distill"}
    assert len(cells) == 8 * 3
    for cell in cells.values():
        assert (cell.data.labels_per_class, cell.data.val_split) == (500, 0.2)
        assert (cell.data.unlabeled, cell.steps) == ("rest", 469)
    assert cells["labels500.distill-fitnets-h10-s2"].method.hint_weight == 10
    assert cells["labels500.distill-dkd-b2-s0"].method.beta == 2
