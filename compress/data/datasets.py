"""Dataset registry: each entry finds its files (or downloads them) and returns raw splits.

Raw splits are ``ImageSource`` objects: a length, labels, class names and a way to get one image
as a uint8 CHW tensor. Resizing, caching and batching happen in ``compress.data.module``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError

from compress.errors import DataError
from compress.registry import DATASETS


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


def data_home() -> Path:
    """Where downloads go and where we look first: $COMPRESS_DATA or ./data."""
    return Path(os.environ.get("COMPRESS_DATA", "data"))


def _candidates(root: Path | None, *names: str) -> list[Path]:
    bases = [root] if root is not None else [data_home(), Path.home() / ".cache" / "compress"]
    found = []
    for base in bases:
        found.append(base)
        found.extend(base / name for name in names)
    return found


def _missing(name: str, looked: list[Path], how: str) -> DataError:
    places = ", ".join(str(p) for p in looked)
    return DataError(f"dataset '{name}' not found; looked in: {places}. {how}")


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

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


def _fashion_folder(root: Path | None) -> tuple[Path | None, list[Path]]:
    looked = _candidates(root, "fashion-mnist", "FashionMNIST/raw")
    if root is None:
        looked.append(DEBIAN_FASHION)
    for folder in looked:
        if all(_find_idx(folder, stem) for pair in _FASHION_FILES.values() for stem in pair):
            return folder, looked
    return None, looked


def _load_fashion(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
    folder, looked = _fashion_folder(root)
    if folder is None and download:
        target = root or data_home()
        _torchvision_download("FashionMNIST", target)
        folder, looked = _fashion_folder(root)
    if folder is None:
        raise _missing("fashion-mnist", looked, DATASETS.get("fashion-mnist").how_to_get)
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


def _torchvision_download(name: str, root: Path) -> None:
    """Best-effort download; failure is not an error here, the caller reports what is missing."""
    try:
        getattr(torchvision.datasets, name)(str(root), train=True, download=True)
        getattr(torchvision.datasets, name)(str(root), train=False, download=True)
    except Exception as exc:  # offline, proxy, disk: the caller explains how to get the data
        print(f"download of {name} failed: {type(exc).__name__}: {str(exc)[:200]}")


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
    )
)


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100


def _cifar_loader(tv_name: str, folder_name: str) -> Callable:
    def load(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
        looked = _candidates(root)
        cls = getattr(torchvision.datasets, tv_name)
        for base in looked:
            if (base / folder_name).is_dir():
                break
        else:
            base = root or data_home()
            if not download:
                raise _missing(tv_name.lower(), looked, DATASETS.get(tv_name.lower()).how_to_get)
        splits = []
        for train in (True, False):
            try:
                ds = cls(str(base), train=train, download=download)
            except Exception as exc:
                raise _missing(
                    tv_name.lower(), looked, DATASETS.get(tv_name.lower()).how_to_get
                ) from exc
            array = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            splits.append(
                ImageSource(
                    labels=torch.as_tensor(ds.targets, dtype=torch.int64),
                    classes=list(ds.classes),
                    array=array,
                )
            )
        return splits[0], splits[1]

    return load


for _name, _tv, _folder, _mean, _std in (
    ("cifar10", "CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    ("cifar100", "CIFAR100", "cifar-100-python", (0.5071, 0.4865, 0.4409), (0.267, 0.256, 0.276)),
):
    DATASETS.register(_name)(
        DatasetInfo(
            load=_cifar_loader(_tv, _folder),
            image_size=32,
            channels=3,
            mean=_mean,
            std=_std,
            how_to_get=(
                f"Online: data.download: true fetches it with torchvision into data/. Offline: "
                f"copy the extracted '{_folder}' folder into data/ (or data.root)."
            ),
        )
    )


# ---------------------------------------------------------------- class-per-folder trees

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_tree(folder: Path, classes: list[str] | None = None) -> ImageSource:
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


def _load_imagefolder(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
    if root is None:
        raise DataError(
            "dataset 'imagefolder' needs data.root: a folder with train/<class>/*.jpg and "
            "test/<class>/*.jpg (or val/)"
        )
    train_dir = root / "train"
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"imagefolder root {root} must contain train/ and test/ (or val/) folders, "
            "each with one sub-folder per class"
        )
    train = _class_tree(train_dir)
    return train, _class_tree(test_dir, train.classes)


DATASETS.register("imagefolder")(
    DatasetInfo(
        load=_load_imagefolder,
        image_size=224,
        channels=3,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        how_to_get="Point data.root at a folder with train/<class>/ and test/<class>/ images.",
    )
)


# ---------------------------------------------------------------- Tiny-ImageNet-200


def _tiny_folder(root: Path | None) -> tuple[Path | None, list[Path]]:
    looked = _candidates(root, "tiny-imagenet-200")
    for folder in looked:
        if (folder / "wnids.txt").is_file() and (folder / "train").is_dir():
            return folder, looked
    return None, looked


def _load_tiny_imagenet(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
    folder, looked = _tiny_folder(root)
    if folder is None:
        raise _missing("tiny-imagenet", looked, DATASETS.get("tiny-imagenet").how_to_get)
    wnids = (folder / "wnids.txt").read_text().split()
    words = {}
    if (folder / "words.txt").is_file():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, name = line.partition("\t")
            words[wnid] = name.split(",")[0].strip()
    classes = [words.get(w, w) for w in wnids]
    train = _class_tree(folder / "train", wnids)
    train.classes = classes
    val = _tiny_val(folder / "val", wnids)
    val.classes = classes
    return train, val


def _tiny_val(val_dir: Path, wnids: list[str]) -> ImageSource:
    """The official val/ is flat with val_annotations.txt; a reorganised class tree also works."""
    annotations = val_dir / "val_annotations.txt"
    if not annotations.is_file():
        return _class_tree(val_dir, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"{annotations}: unknown class '{parts[1]}' for {parts[0]}")
        files.append(val_dir / "images" / parts[0])
        labels.append(index[parts[1]])
    return ImageSource(labels=torch.tensor(labels, dtype=torch.int64), classes=wnids, files=files)


DATASETS.register("tiny-imagenet")(
    DatasetInfo(
        load=_load_tiny_imagenet,
        image_size=64,
        channels=3,
        mean=(0.480, 0.448, 0.398),
        std=(0.277, 0.269, 0.282),
        how_to_get=(
            "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into data/ "
            "(giving data/tiny-imagenet-200/), or set data.root to the folder holding it."
        ),
    )
)
