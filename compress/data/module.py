"""Prepared splits and batches: decode and resize once, then batch from memory.

On a 2-core machine the per-sample Dataset/DataLoader path costs more than the model for small
images, so by default every split is decoded and resized once into a uint8 tensor; batches are
normalised and augmented as whole tensors, on the device that trains: the uint8 batch is what
crosses to a GPU (a quarter of the float bytes), and the host only gathers rows and draws the
random numbers. Shuffling and augmentation draw from generators
seeded by (seed, epoch, batch), so a resumed epoch sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.config.base import DataConfig
from compress.data.datasets import IMAGE_SUFFIXES, ImageSource, images_under
from compress.data.transfer import to_device
from compress.errors import DataError
from compress.registry import DATASETS
from compress.ui import console

MEMORY_CACHE_LIMIT = 4 << 30  # bytes of uint8 pixels kept in RAM under cache: auto
UNLABELED = -1  # the label of data.unlabeled images; hard-label losses ignore it


@dataclass(frozen=True)
class Preprocess:
    """What a consumer must do to an image before the model sees it (stored in the ONNX file)."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def metadata(self) -> dict:
        return {
            "size": [self.size, self.size],
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": "bilinear",
            "scale": 255,
        }


@dataclass
class Split:
    """Images as uint8 N x C x H x W (already resized), or a source decoded per batch."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    source: ImageSource | None = None
    indices: torch.Tensor | None = None  # rows of ``source`` when streaming

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: torch.Tensor) -> Split:
        """The images at ``rows`` (positions in this split), in that order."""
        return Split(
            labels=self.labels[rows],
            images=None if self.images is None else self.images[rows],
            source=self.source,
            indices=None if self.indices is None else self.indices[rows],
        )

    def head(self, n: int) -> Split:
        """The first ``n`` images (all of them when n is 0 or larger than the split)."""
        if not n or n >= len(self):
            return self
        return self.take(torch.arange(n))

    def sample(self, n: int, seed: int) -> Split:
        """``n`` images drawn at random without replacement (class-sorted folders included)."""
        if n >= len(self):
            return self
        return self.take(
            torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        )


def per_class(
    order: torch.Tensor, labels: torch.Tensor, n: int, classes: list[str]
) -> torch.Tensor:
    """The first ``n`` rows of each class in ``order`` (a shuffled order: a stratified draw),
    still in that order."""
    ranked = labels[order]
    keep = torch.zeros(len(order), dtype=torch.bool)
    for c, name in enumerate(classes):
        where = (ranked == c).nonzero().flatten()
        if len(where) < n:
            raise DataError(
                f"data.labels_per_class: {n}, but class '{name}' has {len(where)} training "
                "images; lower labels_per_class"
            )
        keep[where[:n]] = True
    return order[keep]


def resize_uint8(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Bilinear (antialiased) resize and channel conversion of a uint8 NCHW batch."""
    if images.shape[1] != channels:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    if images.shape[-2:] != (size, size):
        resized = F.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


class DataModule:
    """The splits of one data config: train (minus val), val, test."""

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        info = DATASETS.get(cfg.dataset)
        self.cfg = cfg
        self.seed = seed
        channels = cfg.channels or info.channels
        mean = tuple(cfg.mean) if cfg.mean else info.mean
        std = tuple(cfg.std) if cfg.std else info.std
        if len(mean) != channels:  # dataset defaults for a different channel count
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        self.preprocess = Preprocess(cfg.image_size or info.image_size, channels, mean, std)
        self._mean_std: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

        self.skipped: list[str] = []  # corrupt files left out (data.skip_corrupt)
        train_source, test_source = info.load(cfg.root, cfg.download)
        self.classes = list(train_source.classes)
        shuffled = torch.randperm(len(train_source), generator=_gen(seed, 7))
        order = shuffled[: cfg.train_subset] if cfg.train_subset else shuffled
        pool = shuffled  # what unlabeled: rest draws from, minus the labelled images
        if cfg.labels_per_class:  # train_subset is then the pool the labels are drawn from
            pool = order
            order = per_class(order, train_source.labels, cfg.labels_per_class, self.classes)
        n_val = round(len(order) * cfg.val_split)
        test_rows = torch.arange(len(test_source))
        if cfg.test_subset and cfg.test_subset < len(test_source):
            test_rows = torch.randperm(len(test_source), generator=_gen(seed, 11))
            test_rows = test_rows[: cfg.test_subset].sort().values
        self.train = self._split(train_source, order[n_val:])
        self.val = self._split(train_source, order[:n_val]) if n_val else None
        self.test = self._split(test_source, test_rows)
        if len(self.train) == 0:
            raise DataError("the training split is empty; check data.train_subset / val_split")
        if self.skipped:
            shown = "; ".join(self.skipped[:3]) + (" ..." if len(self.skipped) > 3 else "")
            console.print(f"  [yellow]skipped {len(self.skipped)} corrupt image file(s)[/] "
                          f"(data.skip_corrupt): {shown}")  # fmt: skip
        self.unlabeled = None
        if cfg.unlabeled == "rest":  # the training images the labelled split left out
            rest = pool[~torch.isin(pool, order)]
            if len(rest) == 0:
                raise DataError("data.unlabeled: rest: every training image is labelled already")
            kept = self._split(train_source, rest)
            self.unlabeled = replace(kept, labels=torch.full_like(kept.labels, UNLABELED))
        elif cfg.unlabeled:
            self.unlabeled = self._unlabeled(Path(cfg.unlabeled))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # ------------------------------------------------------------------ preparation

    def _split(self, source: ImageSource, rows: torch.Tensor) -> Split:
        size, channels = self.preprocess.size, self.preprocess.channels
        if source.array is not None and not self._stream(len(rows)):
            images = torch.cat(
                [resize_uint8(source.array[rows[i : i + 4096]], size, channels)
                 for i in range(0, len(rows), 4096)]
            )  # fmt: skip
            return Split(labels=source.labels[rows], images=images)
        stream = self._stream(len(rows))
        if stream and not (self.cfg.skip_corrupt and source.files):
            return Split(labels=source.labels[rows], source=source, indices=rows)
        # decode every file once: into memory, or (streaming) only to find the corrupt ones
        images = None if stream else torch.empty(len(rows), channels, size, size, dtype=torch.uint8)
        good = torch.ones(len(rows), dtype=torch.bool)
        for start, chunk, problems in self._decode(source, rows):
            if images is not None:
                images[start : start + len(chunk)] = chunk
            for offset, problem in enumerate(problems):
                if problem:
                    good[start + offset] = False
                    self._corrupt(problem)
        rows = rows[good]
        if stream:
            return Split(labels=source.labels[rows], source=source, indices=rows)
        assert images is not None
        return Split(labels=source.labels[rows], images=images[good])

    def _corrupt(self, problem: str) -> None:
        """An image that does not decode: an error naming it, or (skip_corrupt) one skipped."""
        if not self.cfg.skip_corrupt:
            raise DataError(
                f"{problem}; fix or delete the file, or set data.skip_corrupt: true to skip "
                "such files"
            )
        self.skipped.append(problem)

    def _unlabeled(self, folder: Path) -> Split:
        """Every image file under ``folder`` (recursively), labelled UNLABELED."""
        if not folder.is_dir():
            raise DataError(f"data.unlabeled: {folder} is not a folder")
        files = images_under(folder)
        if not files:
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(f"data.unlabeled: no image files under {folder} (looked for {kinds})")
        labels = torch.full((len(files),), UNLABELED, dtype=torch.int64)
        source = ImageSource(labels=labels, classes=self.classes, files=files)
        return self._split(source, torch.arange(len(files)))

    def _stream(self, n: int) -> bool:
        if self.cfg.cache == "auto":
            p = self.preprocess
            return n * p.channels * p.size * p.size > MEMORY_CACHE_LIMIT
        return self.cfg.cache == "stream"

    def _decode(
        self, source: ImageSource, rows: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor, list[str]]]:
        """(start, images, problems): a problem is '' for an image that decoded."""
        loader = torch.utils.data.DataLoader(
            _Decoded(source, rows, self.preprocess.size, self.preprocess.channels),
            batch_size=256,
            num_workers=self.cfg.workers,
        )
        start = 0
        for images, problems in loader:
            yield start, images, list(problems)
            start += len(images)

    # ------------------------------------------------------------------ batches

    def normalize(self, images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """uint8 images as float, normalised, on ``device`` (default: where they are); they are
        moved while still uint8."""
        images = images if device is None else to_device(images, device)
        mean, std = self._mean_std_on(images.device)
        return (images.float() / 255.0 - mean) / std

    def _mean_std_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Made once a device: on a GPU, making them is a copy from the host that waits for the
        GPU, which once a batch would stall the host every step."""
        if device not in self._mean_std:
            mean, std = (torch.tensor(stats, device=device).view(1, -1, 1, 1)
                         for stats in (self.preprocess.mean, self.preprocess.std))  # fmt: skip
            self._mean_std[device] = mean, std
        return self._mean_std[device]

    def train_batches(
        self,
        epoch: int,
        batch_size: int,
        augment: str,
        skip: int = 0,
        seed: int | None = None,
        rank: int = 0,
        world: int = 1,
        unlabeled: int = 0,
        device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled (x, y, row) batches for one epoch; the last partial batch is dropped.

        x is normalised and augmented on ``device`` (default: the host); y and row stay on the
        host. The random draws are made on the host either way, so a seed gives the same
        batches on a GPU as on the CPU.

        ``seed`` (default: the data seed) changes the order and augmentation, not the split.
        With ``world`` processes, global batch b is rows ``order[b*G:(b+1)*G]`` of one shared
        shuffled order (G = batch_size x world) and process ``rank`` takes its ``batch_size``
        slice of it, augmented with its slice of the global batch's random draws: together the
        processes see exactly the batches one process would see with batch size G.
        ``unlabeled`` > 0 appends that many images of ``data.unlabeled`` to every batch, with
        label UNLABELED and rows numbered after the training split's (len(train) + i); they are
        drawn in a shuffled order that wraps around, so an epoch is still one pass over train
        (each process takes its own ``unlabeled`` of them).
        """
        n = len(self.train)
        seed = self.seed if seed is None else seed
        order = torch.randperm(n, generator=_gen(seed, 1000 + epoch))
        size = batch_size * world
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        extra = self.unlabeled if unlabeled else None
        if extra is not None:
            extra_order = torch.randperm(len(extra), generator=_gen(seed, 2000 + epoch))
        for b in range(skip, self.steps_per_epoch(batch_size, world)):
            rows = order[b * size : (b + 1) * size][mine]
            x = self.normalize(self._images(self.train, rows), device)
            y = self.train.labels[rows]
            if augment != "none":
                gen = _gen(seed, 10**6 + epoch * 10**5 + b)
                x = augment_batch(x, augment, gen, offset=rank * batch_size, total=size)
            if extra is not None:  # this process's slice of the step's unlabeled images
                first = (b * world + rank) * unlabeled
                picked = extra_order[torch.arange(first, first + unlabeled) % len(extra)]
                u = self.normalize(self._images(extra, picked), device)
                if augment != "none":
                    gen = _gen(seed, 3 * 10**6 + epoch * 10**5 + b)
                    u = augment_batch(u, augment, gen, rank * unlabeled, unlabeled * world)
                x, y = torch.cat([x, u]), torch.cat([y, extra.labels[picked]])
                rows = torch.cat([rows, n + picked])
            yield x, y, rows

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        if world > 1 and len(self.train) < batch_size * world:
            raise DataError(
                f"the training split has {len(self.train)} images, fewer than one global batch "
                f"({batch_size} per process x {world} processes); lower batch_size"
            )
        return max(1, len(self.train) // (batch_size * world))

    def eval_batches(
        self, split: Split, batch_size: int | None = None, device: torch.device | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Unshuffled, unaugmented (x, y, row) batches of a split, every image once; x is
        normalised on ``device`` (default: the host)."""
        bs = batch_size or self.cfg.eval_batch_size
        for start in range(0, len(split), bs):
            rows = torch.arange(start, min(start + bs, len(split)))
            yield self.normalize(self._images(split, rows), device), split.labels[rows], rows

    def _images(self, split: Split, rows: torch.Tensor) -> torch.Tensor:
        if split.images is not None:
            return split.images[rows]
        assert split.source is not None and split.indices is not None
        p = self.preprocess
        return torch.stack(
            [
                resize_uint8(split.source.load(int(i)).unsqueeze(0), p.size, p.channels)[0]
                for i in split.indices[rows]
            ]
        )


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, rows: torch.Tensor, size: int, channels: int) -> None:
        self.source, self.rows, self.size, self.channels = source, rows, size, channels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        # a corrupt file is reported, not raised: a worker's exception would reach the user
        # wrapped in its traceback
        try:
            image = self.source.load(int(self.rows[i])).unsqueeze(0)
        except DataError as exc:
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), str(exc)
        return resize_uint8(image, self.size, self.channels)[0], ""


def augment_batch(
    x: torch.Tensor, kind: str, gen: torch.Generator, offset: int = 0, total: int | None = None
) -> torch.Tensor:
    """Horizontal flip, plus pad-by-1/8-and-random-crop for 'standard', on a whole batch.

    The draws are made for ``total`` images (default: this batch) and rows ``offset`` onwards
    are used, so a process augments its slice of a global batch as one process would. They
    come from ``gen`` on the host and the pixels are moved where ``x`` is.
    """
    n, _, h, w = x.shape
    total = total or n
    part = slice(offset, offset + n)
    if kind == "standard":
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad))  # zeros = the mean colour after normalising
        shifts = torch.randint(0, 2 * pad + 1, (2, total), generator=gen)[:, part]
        oy, ox = to_device(shifts, x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]
        x = x.permute(0, 3, 1, 2)
    flip = to_device(torch.rand(total, generator=gen)[part] < 0.5, x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x).contiguous()


def _gen(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


_CACHE: dict[str, DataModule] = {}


def get_data(cfg: DataConfig, seed: int) -> DataModule:
    """One DataModule per (data config, seed) per process, so stages share decoded images."""
    key = cfg.model_dump_json() + f"|{seed}"
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = DataModule(cfg, seed)
    return _CACHE[key]
