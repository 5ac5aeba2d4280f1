"""tiny-imagenet: Tiny-ImageNet-200 (200 classes, 64 px). ``compress data fetch`` downloads the zip,
checks its md5, unpacks it into a hidden temp folder and moves it into place with one rename, so
an interrupted fetch never leaves a half dataset the loader would take for a whole one; its val/
is reorganised into one folder per class, like train/ (the loader reads both layouts)."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import torch

from compress.data.datasets import (
    DatasetInfo,
    Fetcher,
    ImageSource,
    candidates,
    class_tree,
    missing,
)
from compress.data.fetch import download_file, md5_file
from compress.errors import DataError
from compress.registry import DATASETS

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_BYTES = 248_100_043
TINY_FOLDER = "tiny-imagenet-200"


def tiny_folder(root: Path | None) -> tuple[Path | None, list[Path]]:
    looked = candidates(root, "tiny-imagenet-200")
    for folder in looked:
        if (folder / "wnids.txt").is_file() and (folder / "train").is_dir():
            return folder, looked
    return None, looked


def _load_tiny_imagenet(root: Path | None, download: bool) -> tuple[ImageSource, ImageSource]:
    folder, looked = tiny_folder(root)
    if folder is None:
        raise missing("tiny-imagenet", looked, DATASETS.get("tiny-imagenet").how_to_get)
    wnids = (folder / "wnids.txt").read_text().split()
    words = {}
    if (folder / "words.txt").is_file():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, name = line.partition("\t")
            words[wnid] = name.split(",")[0].strip()
    classes = [words.get(w, w) for w in wnids]
    train = class_tree(folder / "train", wnids)
    train.classes = classes
    val = _tiny_val(folder / "val", wnids)
    val.classes = classes
    return train, val


def _tiny_val(val_dir: Path, wnids: list[str]) -> ImageSource:
    """The official val/ is flat with val_annotations.txt; a reorganised class tree also works."""
    annotations = val_dir / "val_annotations.txt"
    if not annotations.is_file():
        return class_tree(val_dir, wnids)
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


TINY_MANUAL = (
    f"Without internet: download {TINY_URL} ({TINY_BYTES / 1e6:.0f} MB, md5 {TINY_MD5}) "
    f"elsewhere and put it at {{target}}/{TINY_FOLDER}.zip, then run "
    "`compress data fetch tiny-imagenet` again (it verifies, unpacks and reorganises it), or "
    "pass it with --archive PATH."
)


def fetch_tiny_imagenet(
    target: Path,
    source: str | None = None,
    md5: str = TINY_MD5,
) -> Path:
    """Download (or take) the zip, verify its md5, unpack it into ``target/tiny-imagenet-200``.

    ``source`` is a local zip or a URL (default: the official one); tests pass a small zip and
    its md5. A zip we downloaded is deleted once unpacked; one the user provided is kept.
    """
    target = Path(target)
    final = target / TINY_FOLDER
    if final.exists():
        raise DataError(
            f"{final} exists but is not a complete Tiny-ImageNet-200 (no wnids.txt or train/); "
            "remove it and fetch again"
        )
    placed = target / f"{TINY_FOLDER}.zip"
    if source is not None and "://" not in source:  # a local zip; file:// URLs download
        archive, downloaded = Path(source), False
        if not archive.is_file():
            raise DataError(f"--archive {archive}: no such file")
    elif source is None and placed.is_file():
        archive, downloaded = placed, False
    else:
        archive, downloaded = placed, True
        download_file(source or TINY_URL, archive, TINY_MANUAL.format(target=target))
    actual = md5_file(archive)
    if actual != md5:
        if downloaded:
            archive.unlink()
        raise DataError(
            f"{archive}: md5 {actual} does not match the expected {md5} (truncated or a "
            "different file); "
            + ("it was deleted, fetch again" if downloaded else "download it again")
        )
    unpack_zip(archive, target, TINY_FOLDER)
    if downloaded:
        archive.unlink()
    return final


def unpack_zip(archive: Path, target: Path, folder: str) -> None:
    """Unpack ``archive``'s top-level ``folder`` to ``target/folder`` with one final rename."""
    for stale in target.glob(f".{folder}.unpacking.*"):  # left by a killed fetch
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder}.unpacking.", dir=target) as tmp:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # extractall drops absolute and '..' parts of member names
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot unpack {archive}: {exc}") from exc
        unpacked = Path(tmp) / folder
        if not unpacked.is_dir():
            raise DataError(f"{archive} has no {folder}/ folder at its top level")
        reorganise_tiny_val(unpacked)
        os.replace(unpacked, target / folder)


def reorganise_tiny_val(folder: Path) -> bool:
    """Move the official flat val/ (images/ + val_annotations.txt) into val/<wnid>/images/.

    The new tree is built beside the old one with hard links, then swapped in with two renames;
    each class folder keeps its boxes in <wnid>_boxes.txt, as in train/. Returns False when
    val/ is already a class tree.
    """
    val, staging, old = folder / "val", folder / ".val.reorganising", folder / ".val.old"
    if not val.exists() and old.is_dir():  # interrupted between the two renames below
        os.replace(old, val)
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        shutil.rmtree(old, ignore_errors=True)
        return False
    wnids = set((folder / "wnids.txt").read_text().split())
    rows = [line.split("\t") for line in annotations.read_text().splitlines() if line.strip()]
    boxes: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if len(row) < 2 or row[1] not in wnids:
            line = "\t".join(row)
            raise DataError(f"{annotations}: bad line {line!r} (a class not in wnids.txt?)")
        if not (val / "images" / row[0]).is_file():
            raise DataError(f"{annotations} lists {row[0]}, which is not in {val / 'images'}")
    shutil.rmtree(staging, ignore_errors=True)
    for file, wnid, *box in rows:
        dest = staging / wnid / "images" / file
        dest.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(val / "images" / file, dest)
        boxes[wnid].append("\t".join([file, *box]))
    for wnid, lines in boxes.items():
        (staging / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    os.replace(val, old)
    os.replace(staging, val)
    shutil.rmtree(old)
    return True


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # file systems without hard links
        shutil.copy2(src, dest)


def _download_tiny(target: Path, source: str | None) -> None:
    fetch_tiny_imagenet(target, source)


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
        fetcher=Fetcher(
            locate=lambda root: tiny_folder(root)[0],
            download=_download_tiny,
            manual=TINY_MANUAL,
            prepare=reorganise_tiny_val,
        ),
    )
)
