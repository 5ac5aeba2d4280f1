"""Datasets are found where users keep them, and missing ones say where we looked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from compress.config.base import DataConfig
from compress.data import module
from compress.data.datasets import decode_image
from compress.data.module import DataModule, augment_batch, resize_uint8
from compress.errors import DataError
from compress.registry import DATASETS


def test_fashion_idx_files_load_with_subsets_and_val_split(fake_fashion: Path):
    cfg = DataConfig(root=fake_fashion, download=False, val_split=0.25, test_subset=10)
    data = DataModule(cfg, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 10)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.num_classes == 10 and data.classes[9] == "Ankle boot"
    assert data.preprocess.metadata()["size"] == [28, 28]


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path: Path):
    with pytest.raises(DataError) as info:
        DataModule(DataConfig(root=tmp_path / "empty", download=False), seed=0)
    message = str(info.value)
    assert str(tmp_path / "empty") in message and "apt-get install dataset-fashion-mnist" in message


def test_resize_and_channel_conversion():
    images = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8)
    out = resize_uint8(images, 32, 3)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])
    assert resize_uint8(out, 16, 1).shape == (4, 1, 16, 16)


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.randn(8, 3, 16, 16)
    a = augment_batch(x, "standard", torch.Generator().manual_seed(3))
    b = augment_batch(x, "standard", torch.Generator().manual_seed(3))
    c = augment_batch(x, "standard", torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    flipped = augment_batch(x, "flip", torch.Generator().manual_seed(0))
    for i in range(len(x)):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_train_batches_are_reproducible_and_resumable(fake_fashion: Path):
    data = DataModule(DataConfig(root=fake_fashion, download=False, batch_size=8), seed=1)
    full = list(data.train_batches(epoch=2, batch_size=8, augment="standard"))
    resumed = list(data.train_batches(epoch=2, batch_size=8, augment="standard", skip=3))
    assert len(full) == 7
    for (xa, ya, _), (xb, yb, _) in zip(full[3:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_cross_to_the_device_as_uint8_and_equal_host_batches(fake_fashion, monkeypatch):
    """Normalising and augmenting happen where the model trains: what is moved is the uint8
    batch (a quarter of the bytes) and the random draws, never float pixels."""
    data = DataModule(DataConfig(root=fake_fashion, download=False, batch_size=8), seed=1)
    moved, real = [], module.to_device
    monkeypatch.setattr(module, "to_device", lambda t, d: moved.append(t.dtype) or real(t, d))
    cpu = torch.device("cpu")
    there = list(data.train_batches(1, 8, "standard", device=cpu))
    here = list(data.train_batches(1, 8, "standard"))
    assert torch.uint8 in moved and torch.float32 not in moved
    for (xa, ya, ra), (xb, yb, rb) in zip(there, here, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ra, rb)
    moved.clear()
    there = [x for x, _, _ in data.eval_batches(data.test, 16, device=cpu)]
    assert moved and set(moved) == {torch.uint8}
    assert torch.equal(torch.cat(there), torch.cat([x for x, _, _ in data.eval_batches(data.test)]))


def test_normalising_makes_its_mean_and_std_once_not_once_a_batch(fake_fashion, monkeypatch):
    """On a GPU, making them is a host copy that waits for the GPU: once a batch would be a
    stall every step."""
    data = DataModule(DataConfig(root=fake_fashion, download=False, batch_size=8), seed=1)
    made, real = [], torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    batches = list(data.train_batches(0, 8, "none", device=torch.device("cpu")))
    assert len(batches) > 2 and len(made) == 2  # the mean and the std


def make_tree(root: Path, classes: list[str], per_class: int, size: int = 12) -> None:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (i * 20, 40, 80)).save(root / name / f"{i}.png")


def test_imagefolder_tree_memory_and_stream_agree(tmp_path: Path):
    make_tree(tmp_path / "train", ["cat", "dog"], 3)
    make_tree(tmp_path / "test", ["cat", "dog"], 2)
    base = {"dataset": "imagefolder", "root": tmp_path, "image_size": 8}
    memory = DataModule(DataConfig(**base, cache="memory"), seed=0)
    stream = DataModule(DataConfig(**base, cache="stream"), seed=0)
    assert memory.classes == ["cat", "dog"] and len(memory.test) == 4
    xm = next(memory.eval_batches(memory.test))[0]
    xs = next(stream.eval_batches(stream.test))[0]
    assert torch.allclose(xm, xs)


def test_corrupt_image_is_named(tmp_path: Path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        decode_image(bad)


def test_tiny_imagenet_val_annotations(tmp_path: Path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids))
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\n")
    for w in wnids:
        make_tree(root / "train" / w, ["images"], 2)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.new("RGB", (12, 12)).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    train, val = DATASETS.get("tiny-imagenet").load(tmp_path, False)
    assert train.classes == ["goldfish", "salamander"] and len(train) == 4
    assert val.labels.tolist() == [1, 0, 1]


def tree_with_a_truncated_png(root: Path) -> Path:
    make_tree(root / "train", ["cat", "dog"], 4)
    make_tree(root / "test", ["cat", "dog"], 2)
    broken = root / "train" / "dog" / "2.png"
    broken.write_bytes(broken.read_bytes()[:40])  # cut inside the image data
    return broken


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_a_truncated_image_is_one_error_naming_it_or_skipped_and_counted(
    tmp_path: Path, cache: str
):
    broken = tree_with_a_truncated_png(tmp_path)
    base = {"dataset": "imagefolder", "root": tmp_path, "image_size": 8, "cache": cache}
    if cache == "memory":  # streaming without skip_corrupt finds the file when it reads it
        with pytest.raises(DataError, match=r"2\.png.*set data.skip_corrupt: true") as info:
            DataModule(DataConfig(**base), seed=0)
        assert len(str(info.value).splitlines()) == 1
    data = DataModule(DataConfig(**base, skip_corrupt=True), seed=0)
    assert len(data.train) == 7 and len(data.test) == 4
    assert len(data.skipped) == 1 and str(broken) in data.skipped[0]
    rows = torch.cat([r for _, _, r in data.train_batches(0, 7, "none")])
    assert len(rows) == 7  # every remaining image decodes when batched


def test_skipped_corrupt_images_reach_the_console_and_the_stage_metrics(tmp_path: Path, cli):
    import json

    import yaml

    broken = tree_with_a_truncated_png(tmp_path / "tree")
    pipeline = {
        "name": "corrupt", "device": "cpu",
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "tree"), "image_size": 16,
                 "batch_size": 4, "skip_corrupt": True},
        "teacher": {"model": {"arch": "mobilenet_v2", "width_mult": 0.25}, "epochs": 1,
                    "augment": "none"},
    }  # fmt: skip
    path = tmp_path / "corrupt.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    done = cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped 1 corrupt image file(s)" in done.stdout and "2.png" in done.stdout
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    metrics = manifest["stages"]["teacher"]["metrics"]
    assert metrics["corrupt_images_skipped"] == 1 and str(broken) in metrics["corrupt_images"][0]
