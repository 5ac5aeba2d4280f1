"""``compress data fetch``: put a dataset where the loaders look for it, or say how to by hand.

Each dataset's ``Fetcher`` (in its module of ``compress.data.sources``) says how; here are
``fetch`` and the download helpers they share. torchvision downloads and md5-checks
Fashion-MNIST and CIFAR.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from compress.data.datasets import data_home
from compress.errors import DataError
from compress.io import atomic_path
from compress.registry import DATASETS
from compress.ui import progress


def fetch(name: str, root: Path | None = None, source: str | None = None) -> tuple[Path, bool]:
    """Make dataset ``name`` available under ``root`` (default $COMPRESS_DATA or ./data).

    Returns the dataset folder and whether anything was downloaded or unpacked. A copy the
    loader already finds (with ``root`` unset: also ~/.cache/compress and Debian's Fashion-MNIST)
    is kept as it is.
    """
    fetcher = DATASETS.get(name).fetcher
    if fetcher is None:
        raise DataError(
            f"{name} is not fetched by compress ({DATASETS.get(name).how_to_get}); "
            f"fetchable: {', '.join(fetchable())}"
        )
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


def fetchable() -> list[str]:
    """The registered datasets ``compress data fetch`` can get."""
    return [name for name, info in DATASETS.items() if info.fetcher is not None]


def torchvision_fetcher(tv_name: str, manual: str) -> Callable[[Path, str | None], None]:
    def download(target: Path, source: str | None) -> None:
        import torchvision.datasets  # here: it costs seconds, and most commands never fetch

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
