"""``compress data check``: which datasets are present, how many images per split and class, and
which image files do not decode, before a long run finds out at epoch 7."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from compress.data.datasets import ImageSource, decode_image
from compress.errors import DataError
from compress.registry import DATASETS
from compress.ui import progress


@dataclass
class DatasetCheck:
    """What one dataset looks like on disk; ``problem`` is set when the loader cannot read it."""

    name: str
    where: Path | None = None
    classes: list[str] = field(default_factory=list)
    counts: dict[str, Counter[int]] = field(default_factory=dict)  # split -> label -> images
    corrupt: list[str] = field(default_factory=list)  # one message per bad file
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.corrupt


def check_dataset(name: str, root: Path | None = None, decode: bool = True) -> DatasetCheck:
    """Load ``name`` without downloading; with ``decode``, decode every image file once."""
    info = DATASETS.get(name)
    fetcher = info.fetcher
    result = DatasetCheck(name)
    try:
        train, test = info.load(root, False)
    except DataError as exc:
        result.problem = str(exc)
        return result
    result.where = fetcher.locate(root) if fetcher is not None else root
    result.classes = list(train.classes)
    for split, source in (("train", train), ("test", test)):
        result.counts[split] = Counter(source.labels.tolist())
        if decode:
            result.corrupt.extend(_undecodable(f"{name} {split}", source))
    return result


def _undecodable(label: str, source: ImageSource) -> list[str]:
    """Messages for the files of ``source`` that do not decode (in-memory splits have none)."""
    if source.array is not None:
        return []
    bad = []
    with progress() as bar:
        task = bar.add_task(f"decode {label}", total=len(source.files), stats="")
        for path in source.files:
            try:
                decode_image(path)
            except DataError as exc:
                bad.append(str(exc))
            bar.advance(task)
    return bad


def summary_table(checks: list[DatasetCheck]) -> Table:
    table = Table(title="datasets")
    for column in ("dataset", "status", "where", "classes", "train", "test", "corrupt"):
        right = column in ("classes", "train", "test", "corrupt")
        table.add_column(column, justify="right" if right else "left", overflow="fold")
    for c in checks:
        if c.problem is not None:
            status = "missing" if "not found" in c.problem else "[red]unreadable[/]"
            table.add_row(c.name, status, "", "", "", "", "")
            table.caption = "get a missing one with: compress data fetch NAME"
            continue
        table.add_row(
            c.name,
            "[green]ok[/]" if c.ok else "[red]corrupt files[/]",
            str(c.where or ""),
            str(len(c.classes)),
            f"{sum(c.counts['train'].values()):,}",
            f"{sum(c.counts['test'].values()):,}",
            str(len(c.corrupt)),
        )
    return table


def class_table(check: DatasetCheck) -> Table:
    """Images per class and split; classes with no images in a split stand out in red."""
    table = Table(title=f"{check.name}: images per class")
    table.add_column("label", justify="right")
    table.add_column("class")
    for split in check.counts:
        table.add_column(split, justify="right")
    for label, name in enumerate(check.classes):
        counts = [check.counts[split].get(label, 0) for split in check.counts]
        table.add_row(str(label), name, *(f"{n:,}" if n else "[red]0[/]" for n in counts))
    return table
