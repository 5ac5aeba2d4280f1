"""The images ``compress quantize`` calibrates on (a TRAIN split) and measures on (the test split),
prepared exactly as the model expects: the preprocessing stored in the file when it has some,
else the dataset's defaults (``--dataset``) or the user's ``--mean/--std`` (``--images DIR``).

An images folder is one of three layouts:

- ``DIR/train/...`` beside ``DIR/test/<class>/...`` (or ``val/``): calibrate on train, measure
  on test;
- ``DIR/<class>/<image>``: calibration images are drawn from it, accuracy is measured on the
  other images;
- a flat folder of images: the same draw; the rest measure only the INT8/FP32 agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.config.base import DataConfig
from compress.data.datasets import IMAGE_SUFFIXES, decode_image, images_under
from compress.data.module import DataModule, resize_uint8
from compress.errors import CompressError, DataError
from compress.registry import DATASETS

Batches = Iterator[tuple[np.ndarray, np.ndarray | None]]


@dataclass
class ImageSet:
    """Calibration and evaluation images for one model input, as float32 NCHW batches."""

    preprocess: dict[str, Any]  # the metadata form: size, channels, mean, std, interpolation, scale
    classes: list[str] | None  # class names in output order, when known
    description: str  # where the calibration images come from: "fashion-mnist train split"
    evaluation_description: str  # and the evaluation images: "fashion-mnist test split"
    calibration_count: int
    evaluation_count: int
    labelled: bool  # evaluation images have labels (accuracy), else agreement only
    calibration: Callable[[int], Iterator[np.ndarray]]
    evaluation: Callable[[int], Batches]


def resolve_preprocess(
    shape: list[Any],
    stored: dict[str, Any] | None,
    mean: list[float] | None,
    std: list[float] | None,
    image_size: int | None,
    defaults: tuple[tuple[float, ...], tuple[float, ...]] | None,
) -> dict[str, Any]:
    """Size from the graph (or --image-size), mean/std from flags, else the file, else defaults."""
    _, channels, height, width = shape
    stored = stored or {}
    if not isinstance(channels, int) or channels not in (1, 3):
        raise CompressError(f"the model takes {channels} input channels; 1 or 3 expected")
    if isinstance(height, int) and isinstance(width, int):
        if image_size is not None and (height, width) != (image_size, image_size):
            raise CompressError(
                f"--image-size {image_size}: the model's input is fixed at {height}x{width}"
            )
    elif image_size is None:
        stored_size = stored.get("size")
        if not stored_size:
            raise CompressError(
                f"the model's input size is dynamic ({height}x{width}); give --image-size N"
            )
        height, width = stored_size
    else:
        height = width = image_size
    if height != width:
        raise CompressError(f"the model's input is {height}x{width}; only square inputs work")
    if mean is None and std is None and stored.get("mean") and stored.get("std"):
        mean, std = stored["mean"], stored["std"]
    if mean is None or std is None:
        if defaults is None:
            raise CompressError(
                "give --mean and --std: the normalisation the model was trained with (the file "
                "stores none), e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
            )
        mean = list(mean or defaults[0])
        std = list(std or defaults[1])
    if len(mean) != channels and len(mean) == 1:
        mean = mean * channels
    if len(std) != channels and len(std) == 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise CompressError(
            f"mean {list(mean)} / std {list(std)} must have {channels} values (input channels)"
        )
    if any(s <= 0 for s in std):
        raise CompressError(f"std values must be > 0, got {list(std)}")
    return {"size": [height, width], "channels": channels, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "interpolation": "bilinear", "scale": 255}  # fmt: skip


def dataset_images(
    name: str,
    root: Path | None,
    preprocess: dict[str, Any],
    calibration_images: int,
    limit: int | None,
    seed: int = 0,
) -> ImageSet:
    """A registered dataset: calibration drawn from its train split, measured on its test split."""
    try:
        cfg = DataConfig(
            dataset=name, root=root, image_size=preprocess["size"][0],
            channels=preprocess["channels"], mean=preprocess["mean"], std=preprocess["std"],
            train_subset=calibration_images, test_subset=limit,
        )  # fmt: skip
    except ValueError as exc:
        first = str(exc).strip().splitlines()
        raise CompressError(f"--dataset {name}: {first[-1] if first else exc}") from None
    data = DataModule(cfg, seed=seed)

    def calibration(batch_size: int) -> Iterator[np.ndarray]:
        for x, _, _ in data.eval_batches(data.train, batch_size):
            yield x.numpy()

    def evaluation(batch_size: int) -> Batches:
        for x, y, _ in data.eval_batches(data.test, batch_size):
            yield x.numpy(), y.numpy()

    return ImageSet(preprocess, data.classes, f"{name} train split", f"{name} test split",
                    len(data.train), len(data.test), True, calibration, evaluation)  # fmt: skip


def dataset_defaults(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    info = DATASETS.get(name)  # an unknown name: one line with a did-you-mean
    return info.mean, info.std


def folder_images(
    folder: Path,
    preprocess: dict[str, Any],
    calibration_images: int,
    limit: int | None,
    known_labels: list[str] | None,
    seed: int = 0,
) -> ImageSet:
    """A folder of images (see the module docstring for the three layouts)."""
    if not folder.is_dir():
        raise DataError(f"--images {folder}: no such folder")
    calibration_files, evaluation_files, labels, classes, where = _layout(folder, known_labels)
    if not calibration_files:
        raise DataError(f"--images {folder}: no image files found")
    order = np.random.default_rng(seed).permutation(len(calibration_files))
    picked = [calibration_files[i] for i in order[:calibration_images]]
    if evaluation_files is None:  # one pool: what calibration did not take is measured
        rest = order[calibration_images:]
        evaluation_files = [calibration_files[i] for i in rest]
        labels = None if labels is None else labels[rest]
    if limit is not None:
        evaluation_files = evaluation_files[:limit]
        labels = None if labels is None else labels[:limit]
    size, channels = preprocess["size"][0], preprocess["channels"]
    mean = torch.tensor(preprocess["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(preprocess["std"]).view(1, -1, 1, 1)

    def load(files: list[Path]) -> np.ndarray:
        images = torch.cat([resize_uint8(decode_image(f).unsqueeze(0), size, channels)
                            for f in files])  # fmt: skip
        return ((images.float() / 255.0 - mean) / std).numpy()

    def calibration(batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(picked), batch_size):
            yield load(picked[start : start + batch_size])

    def evaluation(batch_size: int) -> Batches:
        for start in range(0, len(evaluation_files), batch_size):
            end = start + batch_size
            yield load(evaluation_files[start:end]), None if labels is None else labels[start:end]

    return ImageSet(preprocess, classes, f"{folder}{where[0]}", f"{folder}{where[1]}",
                    len(picked), len(evaluation_files), labels is not None, calibration,
                    evaluation)  # fmt: skip


def _layout(folder: Path, known_labels: list[str] | None) -> tuple[
    list[Path], list[Path] | None, np.ndarray | None, list[str] | None, tuple[str, str]
]:  # fmt: skip
    """(calibration pool, evaluation files or None = the rest of the pool, labels, class names,
    (calibration, evaluation) suffixes of the folder's name for the report)."""
    rest = ("", " (the images calibration did not use)")
    if (folder / "train").is_dir():
        test = next((folder / n for n in ("test", "val") if (folder / n).is_dir()), None)
        train_files = images_under(folder / "train")
        if test is None:
            return train_files, [], None, known_labels, ("/train", "")
        files, labels, classes = _class_tree(test, known_labels)
        return train_files, files, labels, classes, ("/train", f"/{test.name}")
    subfolders = [d for d in folder.iterdir() if d.is_dir() and images_under(d)]
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if subfolders and not loose:
        files, labels, classes = _class_tree(folder, known_labels)
        return files, None, labels, classes, rest
    return images_under(folder), None, None, known_labels, rest


def _class_tree(
    folder: Path, known_labels: list[str] | None
) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and labels of folder/<class>/...: classes by the file's stored label names when they
    cover every folder, else the sorted folder names (torchvision's ImageFolder order)."""
    names = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = known_labels if known_labels and set(names) <= set(known_labels) else names
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in names:
        found = images_under(folder / name)
        files.extend(found)
        labels.extend([index[name]] * len(found))
    if not files:
        raise DataError(f"no images under {folder} (expected {folder}/<class>/<image>)")
    return files, np.asarray(labels, dtype=np.int64), classes
