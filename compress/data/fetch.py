"""``compress data fetch``: put a dataset where the loaders look for it, or say how to by hand.

torchvision downloads and md5-checks Fashion-MNIST and CIFAR. Tiny-ImageNet is one zip that we
download, checksum, unpack into a hidden temp folder and move into place in one rename, so an
interrupted fetch never leaves a half dataset that the loader would take for a whole one. Its
val/ is reorganised into one folder per class, like train/ (the loader reads both layouts).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import torchvision

from compress.data.datasets import _candidates, _fashion_folder, _tiny_folder, data_home
from compress.errors import DataError
from compress.io import atomic_path
from compress.registry import Registry
from compress.ui import progress

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_BYTES = 248_100_043
TINY_FOLDER = "tiny-imagenet-200"


@dataclass(frozen=True)
class Fetcher:
    """How to find one dataset, download it, and get it by hand when there is no network."""

    locate: Callable[[Path | None], Path | None]  # the folder the loader reads, or None
    download: Callable[[Path, str | None], None]  # into a root folder, from an optional source
    manual: str  # what to download and where to put it; {target} is the root folder
    prepare: Callable[[Path], None] | None = None  # tidy a found copy (Tiny-ImageNet's val/)


FETCHERS: Registry[Fetcher] = Registry("fetchable dataset")


def fetch(name: str, root: Path | None = None, source: str | None = None) -> tuple[Path, bool]:
    """Make dataset ``name`` available under ``root`` (default $COMPRESS_DATA or ./data).

    Returns the dataset folder and whether anything was downloaded or unpacked. A copy the
    loader already finds (with ``root`` unset: also ~/.cache/compress and Debian's Fashion-MNIST)
    is kept as it is.
    """
    fetcher = FETCHERS.get(name)
    if source is not None and name != "tiny-imagenet":
        raise DataError(f"--archive is for tiny-imagenet only; {name} is fetched by torchvision")
    found = fetcher.locate(root)
    fetched = found is None
    if found is None:
        target = Path(root) if root is not None else data_home()
        target.mkdir(parents=True, exist_ok=True)
        fetcher.download(target, source)
        found = fetcher.locate(target)
        if found is None:
            raise DataError(
                f"{name} was fetched into {target} but its files are not where the loader looks; "
                + fetcher.manual.format(target=target)
            )
    if fetcher.prepare is not None:
        fetcher.prepare(found)
    return found, fetched


# ---------------------------------------------------------------- torchvision datasets


def _torchvision(tv_name: str, manual: str) -> Callable[[Path, str | None], None]:
    def download(target: Path, source: str | None) -> None:
        cls = getattr(torchvision.datasets, tv_name)
        try:
            for train in (True, False):
                cls(str(target), train=train, download=True)
        except Exception as exc:  # URLError, HTTPError, RuntimeError on a bad md5, disk errors
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DataError(
                f"cannot download {tv_name} with torchvision ({reason}). "
                + manual.format(target=target)
            ) from exc

    return download


def _cifar_locate(folder: str) -> Callable[[Path | None], Path | None]:
    def locate(root: Path | None) -> Path | None:
        return next((b / folder for b in _candidates(root) if (b / folder).is_dir()), None)

    return locate


FASHION_MANUAL = (
    "Without internet: on Debian/Ubuntu run `sudo apt-get install dataset-fashion-mnist` "
    "(files in /usr/share/datasets/fashion-mnist, found automatically); or copy "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (github.com/zalandoresearch/fashion-mnist) into "
    "{target}/fashion-mnist/."
)
FETCHERS.register("fashion-mnist")(
    Fetcher(
        locate=lambda root: _fashion_folder(root)[0],
        download=_torchvision("FashionMNIST", FASHION_MANUAL),
        manual=FASHION_MANUAL,
    )
)

for _name, _tv, _folder, _archive in (
    ("cifar10", "CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
    ("cifar100", "CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz"),
):
    _manual = (
        f"Without internet: download https://www.cs.toronto.edu/~kriz/{_archive} elsewhere and "
        f"either extract it into {{target}}/ (giving {{target}}/{_folder}/) or put the "
        f"{_archive} file in {{target}}/ and run `compress data fetch {_name}` again "
        "(torchvision checks and extracts it)."
    )
    FETCHERS.register(_name)(
        Fetcher(locate=_cifar_locate(_folder), download=_torchvision(_tv, _manual), manual=_manual)
    )


# ---------------------------------------------------------------- Tiny-ImageNet-200

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


def download_file(url: str, path: Path, manual: str) -> None:
    """Stream ``url`` into ``path`` through a temp file, with a progress bar."""
    try:
        with urlopen(url, timeout=60) as response, atomic_path(path) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress() as bar, open(tmp, "wb") as out:
                task = bar.add_task(f"download {path.name}", total=total, stats="")
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.advance(task, len(block))
    except (URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {url} ({reason}). {manual}") from exc


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


FETCHERS.register("tiny-imagenet")(
    Fetcher(
        locate=lambda root: _tiny_folder(root)[0],
        download=_download_tiny,
        manual=TINY_MANUAL,
        prepare=reorganise_tiny_val,
    )
)
