"""fashion-mnist: the four IDX files (Debian's dataset-fashion-mnist, or torchvision's download)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from compress.data.datasets import (
    DatasetInfo,
    Fetcher,
    ImageSource,
    candidates,
    data_home,
    missing,
    torchvision_download,
)
from compress.data.fetch import torchvision_fetcher
from compress.errors import DataError
from compress.registry import DATASETS

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, EOFError, IndexError) as exc:
        raise DataError(f"corrupt IDX file {path}: {exc}") from exc


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def fashion_folder(root: Path | None) -> tuple[Path | None, list[Path]]:
    looked = candidates(root, "fashion-mnist", "FashionMNIST/raw")
    if root is None:
        looked.append(DEBIAN_FASHION)
    for folder in looked:
        if all(_find_idx(folder, stem) for pair in _FASHION_FILES.values() for stem in pair):
            return folder, looked
    return None, looked


def _load_fashion(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
    folder, looked = fashion_folder(root)
    if folder is None and download:
        target = root or data_home()
        torchvision_download("FashionMNIST", target)
        folder, looked = fashion_folder(root)
    if folder is None:
        raise missing("fashion-mnist", looked, DATASETS.get("fashion-mnist").how_to_get)
    splits = []
    for images_stem, labels_stem in _FASHION_FILES.values():
        images = _read_idx(_find_idx(folder, images_stem))  # type: ignore[arg-type]
        labels = _read_idx(_find_idx(folder, labels_stem))  # type: ignore[arg-type]
        if len(images) != len(labels):
            raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels")
        splits.append(
            ImageSource(
                labels=torch.from_numpy(labels.astype(np.int64)),
                classes=FASHION_CLASSES,
                array=torch.from_numpy(images.copy()).unsqueeze(1),
            )
        )
    return splits[0], splits[1]


FASHION_MANUAL = (
    "Without internet: on Debian/Ubuntu run `sudo apt-get install dataset-fashion-mnist` "
    "(files in /usr/share/datasets/fashion-mnist, found automatically); or copy "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (github.com/zalandoresearch/fashion-mnist) into "
    "{target}/fashion-mnist/."
)
DATASETS.register("fashion-mnist")(
    DatasetInfo(
        load=_load_fashion,
        image_size=28,
        channels=1,
        mean=(0.2860,),
        std=(0.3530,),
        how_to_get=(
            "On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            "(files in /usr/share/datasets/fashion-mnist); online: set data.download: true; "
            "or put the four IDX files in data/fashion-mnist/ (or data.root)."
        ),
        fetcher=Fetcher(
            locate=lambda root: fashion_folder(root)[0],
            download=torchvision_fetcher("FashionMNIST", FASHION_MANUAL),
            manual=FASHION_MANUAL,
        ),
    )
)
