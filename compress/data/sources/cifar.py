"""cifar10, cifar100: torchvision's CIFAR folders (downloaded by torchvision, or copied in)."""

from __future__ import annotations

from collections.abc import Callable
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
)
from compress.data.fetch import torchvision_fetcher
from compress.registry import DATASETS


def _cifar_loader(tv_name: str, folder_name: str) -> Callable:
    def load(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
        looked = candidates(root)
        for base in looked:
            if (base / folder_name).is_dir():
                break
        else:
            base = root or data_home()
            if not download:
                raise missing(tv_name.lower(), looked, DATASETS.get(tv_name.lower()).how_to_get)
        import torchvision.datasets  # here, once data is there: importing it costs seconds

        cls = getattr(torchvision.datasets, tv_name)
        splits = []
        for train in (True, False):
            try:
                ds = cls(str(base), train=train, download=download)
            except Exception as exc:
                raise missing(
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


def _cifar_locate(folder: str) -> Callable[[Path | None], Path | None]:
    def locate(root: Path | None) -> Path | None:
        return next((b / folder for b in candidates(root) if (b / folder).is_dir()), None)

    return locate


for _name, _tv, _folder, _archive, _mean, _std in (
    ("cifar10", "CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
     (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    ("cifar100", "CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz",
     (0.5071, 0.4865, 0.4409), (0.267, 0.256, 0.276)),
):  # fmt: skip
    _manual = (
        f"Without internet: download https://www.cs.toronto.edu/~kriz/{_archive} elsewhere and "
        f"either extract it into {{target}}/ (giving {{target}}/{_folder}/) or put the "
        f"{_archive} file in {{target}}/ and run `compress data fetch {_name}` again "
        "(torchvision checks and extracts it)."
    )
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
            fetcher=Fetcher(
                locate=_cifar_locate(_folder),
                download=torchvision_fetcher(_tv, _manual),
                manual=_manual,
            ),
        )
    )
