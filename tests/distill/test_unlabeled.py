"""data.unlabeled: extra images the teacher labels; only the distillation terms apply to them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.config.base import DataConfig
from compress.config.load import parse_pipeline
from compress.data.module import UNLABELED, DataModule
from compress.distill import METHODS, load_methods
from compress.errors import ConfigError, DataError
from tests.conftest import run_pipeline_dict

load_methods()


def write_pngs(folder: Path, n: int) -> Path:
    """``n`` RGB PNGs of assorted sizes, some in a sub-folder, plus a file that is not an image."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n):
        where = folder / ("nested/deeper" if i % 2 else "")
        where.mkdir(parents=True, exist_ok=True)
        size = 20 + 4 * (i % 3)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            where / f"img{i}.png"
        )
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_unlabeled_rows_join_every_batch_after_the_labelled_ones(fake_fashion, tmp_path):
    folder = write_pngs(tmp_path / "extra", 5)
    data = DataModule(DataConfig(root=fake_fashion, download=False, unlabeled=folder), seed=0)
    assert data.unlabeled is not None and len(data.unlabeled) == 5  # recursive, images only
    assert data.unlabeled.images.shape[1:] == (1, 28, 28)  # converted like the dataset
    n = len(data.train)
    seen = []
    for x, y, rows in data.train_batches(0, 8, "none", unlabeled=3):
        assert x.shape[0] == 11 and (y[:8] >= 0).all() and (y[8:] == UNLABELED).all()
        assert (rows[:8] < n).all() and (rows[8:] >= n).all()
        seen += (rows[8:] - n).tolist()
    assert sorted(seen[:5]) == list(range(5))  # a shuffled pass over the folder, wrapping round


def test_missing_or_empty_unlabeled_folder_is_one_clear_error(fake_fashion, tmp_path):
    raw = {"name": "x", "data": {"unlabeled": str(tmp_path / "nope")},
           "distill": {"method": "baseline"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.unlabeled: no such folder"):
        parse_pipeline(raw)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    cfg = DataConfig(root=fake_fashion, download=False, unlabeled=tmp_path / "empty")
    with pytest.raises(DataError, match=r"data\.unlabeled: no image files under"):
        DataModule(cfg, seed=0)


@pytest.mark.parametrize("name", ["kd", "fitnets", "rkd", "contrastive", "dkd", "attention"])
def test_unlabeled_rows_get_no_cross_entropy(name):
    """With CE weight only (soft terms off), unlabeled rows change nothing: the loss equals CE
    over the labelled rows; with the soft terms on, they do contribute."""
    gen = torch.Generator().manual_seed(0)
    spec = METHODS.get(name)
    params = spec.params()
    from tests.distill.test_distill_methods import random_features

    features, shapes = random_features(params, batch=8, requires_grad=False)
    student = torch.randn(8, 10, generator=gen)
    teacher = torch.randn(8, 10, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, UNLABELED, UNLABELED, UNLABELED])
    loss_fn = spec.build(params, shapes, torch.nn.Linear(2, 2))
    loss = loss_fn(student, teacher, labels, features)
    assert torch.isfinite(loss)
    ce = F.cross_entropy(student[:5], labels[:5]).item()
    weight = params.hard_label_weight()
    soft = loss.item() - weight * ce
    assert soft > 0  # the unlabeled rows' distillation terms are there...
    relabelled = loss_fn(student, teacher, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]), features)
    assert relabelled.item() != pytest.approx(loss.item())  # ...and their labels are not


def test_dkd_uses_the_teachers_top_class_on_unlabeled_rows():
    spec = METHODS.get("dkd")
    loss_fn = spec.build(spec.params(ce_weight=0.0))
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    unlabeled = loss_fn(student, teacher, torch.full((4,), UNLABELED))
    as_labels = loss_fn(student, teacher, teacher.argmax(1))
    assert unlabeled.item() == pytest.approx(as_labels.item(), rel=1e-6)


def test_unlabeled_images_through_compress_run(fake_fashion, tmp_path):
    folder = write_pngs(tmp_path / "extra", 12)
    pipeline = {
        "name": "unlabeled",
        "data": {"dataset": "fashion-mnist", "root": str(fake_fashion), "download": False,
                 "image_size": 16, "batch_size": 16, "unlabeled": str(folder),
                 "unlabeled_batch_size": 8},
        "teacher": {"model": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none"},
        "distill": {"student": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 2,
                    "augment": "none", "method": "kd"},
        "distill_live": {"type": "distill", "input": "teacher", "epochs": 1, "augment": "flip",
                         "student": {"arch": "mobilenet_v2", "width_mult": 0.25},
                         "method": {"name": "fitnets", "pairs": [{"student": "features.6",
                                                                  "teacher": "features.6"}]}},
    }  # fmt: skip
    out, stages = run_pipeline_dict(pipeline, tmp_path)
    assert "+ 8 of 12 unlabeled images a step" in out
    assert "computing teacher logits once for 72 training images" in out  # 60 + 12, cached
    assert stages["distill"]["status"] == stages["distill_live"]["status"] == "done"
    history = json.loads((tmp_path / "run" / "distill" / "history.json").read_text())
    assert all(0.0 <= h["train_top1"] <= 1.0 for h in history)
