"""compress data fetch/check on small fakes: no network, every path a user can hit offline."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.data.check import check_dataset
from compress.data.fetch import fetch, fetchable, md5_file
from compress.data.sources.tiny_imagenet import TINY_URL, fetch_tiny_imagenet, reorganise_tiny_val
from compress.errors import CompressError, DataError
from compress.registry import DATASETS
from tests.conftest import write_idx

WNIDS = ["n01443537", "n01629819"]
VAL_LABELS = ["n01629819", "n01443537", "n01629819", "n01443537", "n01629819"]


def make_tiny(root: Path) -> Path:
    """A Tiny-ImageNet-200 tree in the official layout: 2 classes, 3 train and 5 val images."""
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text(f"{WNIDS[0]}\tgoldfish, Carassius auratus\n{WNIDS[1]}\teft")
    for w in WNIDS:
        images = folder / "train" / w / "images"
        images.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(images / f"{w}_{i}.JPEG")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(VAL_LABELS):
        Image.new("RGB", (8, 8), (10, i * 40, 10)).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t1\t7\t{i}")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def zip_tree(folder: Path, archive: Path) -> str:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent))
    return md5_file(archive)


def labelled(source) -> Counter:
    return Counter((p.name, int(y)) for p, y in zip(source.files, source.labels, strict=True))


def test_reorganised_val_is_a_class_tree_with_the_same_labels(tmp_path: Path):
    folder = make_tiny(tmp_path)
    _, flat_val = DATASETS.get("tiny-imagenet").load(tmp_path, False)

    assert reorganise_tiny_val(folder) is True

    val = folder / "val"
    assert sorted(p.name for p in val.iterdir()) == WNIDS  # nothing else left behind
    assert sorted(p.name for p in (val / WNIDS[1] / "images").iterdir()) == [
        "val_0.JPEG", "val_2.JPEG", "val_4.JPEG",
    ]  # fmt: skip
    assert (val / WNIDS[1] / f"{WNIDS[1]}_boxes.txt").read_text().splitlines()[0] == (
        "val_0.JPEG\t0\t1\t7\t0"
    )
    assert not any(p.name.startswith(".val") for p in folder.iterdir())
    _, tree_val = DATASETS.get("tiny-imagenet").load(tmp_path, False)
    assert labelled(tree_val) == labelled(flat_val) and len(tree_val) == 5
    assert reorganise_tiny_val(folder) is False  # already a class tree: nothing to do


def test_reorganise_refuses_an_unknown_class_and_leaves_val_as_it_was(tmp_path: Path):
    folder = make_tiny(tmp_path)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="n99999999"):
        reorganise_tiny_val(folder)
    assert annotations.is_file() and len(list((folder / "val" / "images").iterdir())) == 5


def test_fetch_from_a_file_url_verifies_unpacks_and_reorganises(tmp_path: Path):
    md5 = zip_tree(make_tiny(tmp_path / "src"), tmp_path / "tiny.zip")
    target = tmp_path / "data"
    (target / ".tiny-imagenet-200.unpacking.killed" / "tiny-imagenet-200").mkdir(parents=True)

    folder = fetch_tiny_imagenet(target, (tmp_path / "tiny.zip").as_uri(), md5=md5)

    assert folder == target / "tiny-imagenet-200"
    # the downloaded zip, this fetch's temp folder and a killed fetch's are all gone
    assert sorted(p.name for p in target.iterdir()) == ["tiny-imagenet-200"]
    assert not (folder / "val" / "val_annotations.txt").exists()
    train, val = DATASETS.get("tiny-imagenet").load(target, False)
    assert (len(train), len(val)) == (6, 5) and train.classes == ["goldfish", "eft"]
    assert (tmp_path / "tiny.zip").is_file()  # the source is never touched


def test_a_wrong_checksum_unpacks_nothing_and_keeps_the_users_zip(tmp_path: Path):
    zip_tree(make_tiny(tmp_path / "src"), tmp_path / "tiny.zip")
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(DataError, match=r"does not match the expected 0{32}"):
        fetch_tiny_imagenet(target, str(tmp_path / "tiny.zip"), md5="0" * 32)
    assert list(target.iterdir()) == [] and (tmp_path / "tiny.zip").is_file()


def test_a_downloaded_zip_with_a_wrong_checksum_is_deleted(tmp_path: Path):
    zip_tree(make_tiny(tmp_path / "src"), tmp_path / "tiny.zip")
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(DataError, match="it was deleted, fetch again"):
        fetch_tiny_imagenet(target, (tmp_path / "tiny.zip").as_uri(), md5="0" * 32)
    assert list(target.iterdir()) == []


def test_a_zip_placed_in_the_data_folder_is_used_and_kept(tmp_path: Path):
    target = tmp_path / "data"
    target.mkdir()
    md5 = zip_tree(make_tiny(tmp_path / "src"), target / "tiny-imagenet-200.zip")
    folder = fetch_tiny_imagenet(target, md5=md5)
    assert (folder / "wnids.txt").is_file() and (target / "tiny-imagenet-200.zip").is_file()


def test_offline_fetch_says_what_to_download_and_where(tmp_path: Path):
    missing = (tmp_path / "no-such.zip").as_uri()
    with pytest.raises(DataError) as info:
        fetch_tiny_imagenet(tmp_path, missing)
    message = str(info.value)
    assert TINY_URL in message and str(tmp_path / "tiny-imagenet-200.zip") in message
    assert "90528d7ca1a48142e341f4ef8d21d0de" in message
    assert list(tmp_path.iterdir()) == []  # no partial download left


def test_fetch_keeps_a_present_copy_and_reorganises_its_val(tmp_path: Path):
    make_tiny(tmp_path)
    folder, fetched = fetch("tiny-imagenet", tmp_path)
    assert folder == tmp_path / "tiny-imagenet-200" and fetched is False
    assert (folder / "val" / WNIDS[0] / "images" / "val_1.JPEG").is_file()


class _Offline:
    def __init__(self, root: str, train: bool, download: bool) -> None:
        from urllib.error import URLError

        raise URLError("[Errno -3] Temporary failure in name resolution")


class _FakeFashion:
    """Stands in for torchvision's downloader: writes the four IDX files where it would."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        prefix, n = ("train", 30) if train else ("t10k", 10)
        rng = np.random.default_rng(0)
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_offline_fashion_mnist_names_the_debian_package(tmp_path: Path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _Offline)
    with pytest.raises(DataError) as info:
        fetch("fashion-mnist", tmp_path / "data")
    message = str(info.value)
    assert "name resolution" in message and "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "data" / "fashion-mnist") in message


def test_fashion_mnist_fetch_puts_files_where_the_loader_finds_them(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _FakeFashion)
    folder, fetched = fetch("fashion-mnist", tmp_path)
    assert fetched and folder == tmp_path / "FashionMNIST" / "raw"
    train, test = DATASETS.get("fashion-mnist").load(tmp_path, False)
    assert (len(train), len(test)) == (30, 10)


def test_archive_is_for_tiny_imagenet_only(tmp_path: Path):
    with pytest.raises(DataError, match="tiny-imagenet only"):
        fetch("cifar10", tmp_path, "cifar-10-python.tar.gz")


def test_fetch_of_an_unknown_dataset_lists_the_valid_ones(tmp_path: Path):
    with pytest.raises(CompressError, match=r"did you mean 'cifar10'.*valid: cifar10, cifar100"):
        fetch("cifar11", tmp_path)


def test_check_counts_per_split_and_class_and_finds_corrupt_files(tmp_path: Path):
    folder = make_tiny(tmp_path)
    reorganise_tiny_val(folder)
    broken = folder / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_2.JPEG"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")

    result = check_dataset("tiny-imagenet", tmp_path)

    assert result.problem is None and result.where == folder
    assert result.classes == ["goldfish", "eft"]
    assert result.counts == {"train": Counter({0: 3, 1: 3}), "test": Counter({0: 2, 1: 3})}
    assert len(result.corrupt) == 1 and str(broken) in result.corrupt[0] and not result.ok


def test_check_of_a_missing_dataset_reports_it_without_downloading(tmp_path: Path):
    result = check_dataset("cifar10", tmp_path)
    assert result.problem is not None and "not found" in result.problem
    assert list(tmp_path.iterdir()) == []


def test_data_check_cli_exits_non_zero_and_names_the_corrupt_file(tmp_path: Path, cli):
    folder = make_tiny(tmp_path)
    broken = folder / "val" / "images" / "val_3.JPEG"
    broken.write_bytes(b"")
    bad = cli("data", "check", "tiny-imagenet", "--root", str(tmp_path), timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "val_3.JPEG" in bad.stdout and "goldfish" in bad.stdout

    broken.unlink()
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{w}\n" for i, w in enumerate(VAL_LABELS) if i != 3)
    )
    good = cli("data", "check", "tiny-imagenet", "--root", str(tmp_path), timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok" in good.stdout


def test_the_four_datasets_with_a_fetcher_are_fetchable():
    assert fetchable() == [
        "cifar10",
        "cifar100",
        "fashion-mnist",
        "tiny-imagenet",
    ]
