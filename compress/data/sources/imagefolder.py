"""imagefolder: any class-per-folder tree under data.root (train/<class>/, test/<class>/)."""

from __future__ import annotations

from pathlib import Path

from compress.data.datasets import DatasetInfo, ImageSource, class_tree
from compress.errors import DataError
from compress.registry import DATASETS


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
    train = class_tree(train_dir)
    return train, class_tree(test_dir, train.classes)


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
