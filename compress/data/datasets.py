"""What every dataset shares: the ``DatasetInfo`` it registers in ``DATASETS`` (one module each
in ``compress.data.sources``), the raw splits it returns, and where files are looked for.

Raw splits are ``ImageSource`` objects: a length, labels, class names and a way to get one image
as a uint8 CHW tensor. Resizing, caching and batching happen in ``compress.data.module``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from compress.errors import DataError


@dataclass
class ImageSource:
    """One split: either all images in memory (``array``) or files decoded on demand."""

    labels: torch.Tensor
    classes: list[str]
    array: torch.Tensor | None = None  # uint8 N x C x H x W
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> torch.Tensor:
        if self.array is not None:
            return self.array[index]
        return decode_image(self.files[index])


def decode_image(path: Path) -> torch.Tensor:
    """Decode an image file to uint8 CHW RGB; a corrupt file names itself."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"corrupt or unreadable image: {path} ({exc})") from exc
    return torch.from_numpy(array).permute(2, 0, 1)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is by default; the data config can override size, channels and norm."""

    load: Callable[[Path | None, bool], tuple[ImageSource, ImageSource]]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str
    fetcher: Fetcher | None = None  # compress data fetch; None: the user provides the files


@dataclass(frozen=True)
class Fetcher:
    """How to find one dataset, download it, and get it by hand when there is no network."""

    locate: Callable[[Path | None], Path | None]  # the folder the loader reads, or None
    download: Callable[[Path, str | None], None]  # into a root folder, from an optional source
    manual: str  # what to download and where to put it; {target} is the root folder
    prepare: Callable[[Path], None] | None = None  # tidy a found copy (Tiny-ImageNet's val/)


def data_home() -> Path:
    """Where downloads go and where we look first: $COMPRESS_DATA or ./data."""
    return Path(os.environ.get("COMPRESS_DATA", "data"))


def candidates(root: Path | None, *names: str) -> list[Path]:
    bases = [root] if root is not None else [data_home(), Path.home() / ".cache" / "compress"]
    found = []
    for base in bases:
        found.append(base)
        found.extend(base / name for name in names)
    return found


def missing(name: str, looked: list[Path], how: str) -> DataError:
    places = ", ".join(str(p) for p in looked)
    return DataError(f"dataset '{name}' not found; looked in: {places}. {how}")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def class_tree(folder: Path, classes: list[str] | None = None) -> ImageSource:
    names = classes or sorted(d.name for d in folder.iterdir() if d.is_dir())
    files, labels = [], []
    for label, name in enumerate(names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = images_under(class_dir)
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise DataError(f"no images found under {folder} (expected {folder}/<class>/<image>)")
    return ImageSource(labels=torch.tensor(labels, dtype=torch.int64), classes=names, files=files)


def torchvision_download(name: str, root: Path) -> None:
    """Best-effort download; failure is not an error here, the caller reports what is missing."""
    import torchvision.datasets  # here: importing torchvision costs seconds

    try:
        getattr(torchvision.datasets, name)(str(root), train=True, download=True)
        getattr(torchvision.datasets, name)(str(root), train=False, download=True)
    except Exception as exc:  # offline, proxy, disk: the caller explains how to get the data
        print(f"download of {name} failed: {type(exc).__name__}: {str(exc)[:200]}")
