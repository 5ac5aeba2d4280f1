"""Train a student with a distillation method: the step every distilling stage shares.

Feature methods get their layers' outputs through forward hooks, with shapes probed once before
training so projections can be built. When the training inputs are fixed (``augment: none``),
the teacher's logits for the training split, and the outputs of the teacher layers a feature
method taps (when they fit in ``FEATURE_CACHE_BYTES``), are computed once per run and reused by
every epoch and every stage distilling from the same teacher on the same data: the frozen
teacher gives identical numbers, and its forward pass (the dearest part on a CPU) is paid once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress import distributed
from compress.config.base import TrainConfig
from compress.data.module import DataModule, Split
from compress.data.transfer import to_device
from compress.distill.base import METHODS, DistillLoss, Features, FeatureShapes
from compress.distill.config import DistillSettings
from compress.distill.features import probe_shapes, tapped
from compress.io import exclusive, load_torch, save_torch, sha256_json
from compress.models import load_model
from compress.train.evaluate import predict
from compress.train.loop import FitResult, fit
from compress.train.optim import total_steps
from compress.ui import console

TeacherLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TeacherFeatures = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
FEATURE_CACHE_BYTES = 4 << 30  # tapped teacher outputs above this are recomputed every step


@dataclass(frozen=True)
class TeacherFile:
    """A teacher's model file and its checksum (the key of its cached logits)."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class DistillRun:
    """Where one distillation writes: its checkpoint (for resuming), logs and the cache of
    teacher logits shared by the runs of one directory; ``fingerprint`` ties a checkpoint to
    the config that wrote it."""

    device: torch.device
    checkpoint: Path
    fingerprint: str
    tensorboard_dir: Path | None
    cache_dir: Path


def build_loss(
    settings: DistillSettings, shapes: FeatureShapes, student: nn.Module | None = None
) -> DistillLoss:
    return METHODS.get(settings.method.name).build(settings.method, shapes, student)


def distill_student(
    student: nn.Module,
    settings: DistillSettings,
    train: TrainConfig,
    data: DataModule,
    teacher_files: list[TeacherFile],
    where: DistillRun,
    label: str,
    seed: int | None = None,
) -> FitResult:
    """Train ``student`` in place from the teachers in ``teacher_files`` with
    ``settings.method`` (the first teacher is the one feature methods tap)."""
    device = where.device
    student.to(device)  # fit sets its memory format
    teacher_files = teacher_files if settings.uses_teacher() else []
    # a teacher file is read only when its network runs: a live teacher, a shape probe or
    # filling the cache; a stage whose teacher outputs are cached never builds it
    teacher_at = functools.cache(lambda i: load_teacher(teacher_files[i].path, device))
    student_layers, teacher_layers = settings.layers()
    example = next(data.eval_batches(data.test, 2))[0].to(device)
    shapes = FeatureShapes(
        probe_shapes(student, student_layers, example, "the student"),
        probe_shapes(teacher_at(0), teacher_layers, example, "the teacher")
        if teacher_files and teacher_layers
        else {},
    )
    loss_fn = build_loss(settings, shapes, student).to(device)
    # every process takes this many steps (each trains on its slice of a global batch)
    batch_size = train.batch_size or data.cfg.batch_size
    loss_fn.plan(total_steps(train, data.steps_per_epoch(batch_size, distributed.world_size())))
    cache = bool(teacher_files) and train.augment == "none" and settings.cache_teacher
    cache = cache and _features_fit(shapes.teacher, data)
    started = time.perf_counter()
    teacher_logits_for, cached_features_for = teacher_source(
        teacher_at, teacher_files, teacher_layers, data, where, cached=cache
    )
    logits_seconds = time.perf_counter() - started
    live_layers = [] if cache else teacher_layers  # cached: the teacher does not run at all
    unlabeled_batch = 0
    if data.unlabeled is not None:
        if not teacher_files:
            console.print(f"  data.unlabeled: not used by {settings.method_name()} (no teacher)")
        else:
            unlabeled_batch = (
                data.cfg.unlabeled_batch_size or train.batch_size or data.cfg.batch_size
            )
            console.print(
                f"  + {unlabeled_batch} of {len(data.unlabeled):,} unlabeled images a step"
            )

    with (
        tapped(student, student_layers, "the student") as student_taps,
        tapped(
            teacher_at(0) if live_layers else nn.Identity(), live_layers, "the teacher"
        ) as teacher_taps,
    ):
        # the taps hook the student itself, not its DDP wrapper ``net``: the same modules run
        def step_loss(net: nn.Module, loss: nn.Module, x: torch.Tensor, y: torch.Tensor, rows):
            logits = net(x)
            teacher_logits = teacher_logits_for(x, rows) if teacher_logits_for else None
            taught = cached_features_for(x, rows) if cache else dict(teacher_taps.outputs)
            features = Features(dict(student_taps.outputs), taught, x)
            return logits, loss(logits, teacher_logits, y, features)

        result = fit(
            student,
            step_loss,
            data,
            train,
            device=device,
            checkpoint=where.checkpoint,
            fingerprint=where.fingerprint,
            label=label,
            augment=train.augment,
            companion=loss_fn,
            tensorboard_dir=where.tensorboard_dir,
            seed=seed,
            unlabeled_batch=unlabeled_batch,
        )
    result.companion = loss_fn
    if cache:
        result.timings["teacher_logits_seconds"] = round(logits_seconds, 2)
    return result


def load_teacher(path: Path, device: torch.device) -> nn.Module:
    teacher, _, _ = load_model(path)
    teacher.to(device).to(memory_format=torch.channels_last).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_source(
    teacher_at: Callable[[int], nn.Module],
    files: list[TeacherFile],
    layers: list[str],
    data: DataModule,
    where: DistillRun,
    cached: bool,
) -> tuple[TeacherLogits | None, TeacherFeatures]:
    """(x, rows) -> teacher logits, and (x, rows) -> the first teacher's tapped ``layers``:
    a live forward pass (whose hooks fill the taps), or rows of the cached outputs.

    With several teachers the logits are stacked: teachers x batch x classes. ``teacher_at(i)``
    builds the i-th teacher of ``files``; on a cache hit it is never called.
    """
    if not files:
        return None, lambda x, rows: {}
    if not cached:
        teachers = [teacher_at(i) for i in range(len(files))]

        def live(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                outputs = [teacher(x) for teacher in teachers]
            return outputs[0] if len(outputs) == 1 else torch.stack(outputs)

        return live, lambda x, rows: {}
    stored = [
        _cached_outputs(functools.partial(teacher_at, i), f, layers if i == 0 else [], data, where)
        for i, f in enumerate(files)
    ]
    logits = stored[0][0] if len(stored) == 1 else torch.stack([s[0] for s in stored])
    logits, *outputs = resident([logits, *stored[0][1].values()], where.device)
    features = dict(zip(stored[0][1], outputs, strict=True))
    return (
        lambda x, rows: take_rows(logits, logits.dim() - 2, rows, x.device),
        lambda x, rows: {name: take_rows(out, 0, rows, x.device) for name, out in features.items()},
    )


def resident(outputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Cached teacher outputs moved onto a GPU once when they take under a quarter of its free
    memory, so each step picks its rows there instead of copying them from the host; otherwise
    (and on a CPU) left where they are."""
    if device.type != "cuda":
        return outputs
    size = sum(t.numel() * t.element_size() for t in outputs)
    if size > torch.cuda.mem_get_info(device)[0] // 4:
        return outputs
    return [t.to(device) for t in outputs]


def take_rows(
    stored: torch.Tensor, dim: int, rows: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``rows`` of ``stored`` along ``dim``, on ``device``: picked where ``stored`` lives, and
    copied through pinned memory when that is the host and ``device`` a GPU (``to_device``)."""
    return to_device(stored.index_select(dim, to_device(rows, stored.device)), device)


def _features_fit(shapes: dict[str, tuple[int, ...]], data: DataModule) -> bool:
    """Whether the tapped teacher outputs of every training image fit the cache budget."""
    if not shapes:
        return True
    images = len(data.train) + (len(data.unlabeled) if data.unlabeled is not None else 0)
    size = images * sum(4 * torch.Size(shape).numel() for shape in shapes.values())
    if size > FEATURE_CACHE_BYTES:
        console.print(
            f"  teacher features of {images:,} images need {size / 2**30:.1f} GiB: "
            "not cached, the teacher runs every step"
        )
    return size <= FEATURE_CACHE_BYTES


def _cached_outputs(
    teacher: Callable[[], nn.Module],
    source: TeacherFile,
    layers: list[str],
    data: DataModule,
    where: DistillRun,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Teacher logits (and tapped ``layers``) of the training split, then of ``data.unlabeled``
    (rows len(train) + i), shared by stages through the run's cache folder."""
    split_keys = {"dataset", "root", "image_size", "channels", "mean", "std", "train_subset",
                  "labels_per_class", "val_split", "unlabeled"}  # fmt: skip
    data_cfg = data.cfg.model_dump(mode="json", include=split_keys)
    identity = {"teacher": source.sha256, "data": data_cfg, "seed": data.seed}
    key = sha256_json({**identity, "layers": layers} if layers else identity)
    path = where.cache_dir / f"teacher_logits-{key[:16]}.pt"
    # rank 0 computes and saves, the others load its file; parallel jobs take turns likewise
    with distributed.main_first(), exclusive(path.with_name(path.name + ".lock")):
        return _load_or_compute(teacher, layers, data, where.device, path, key)


def _load_or_compute(
    teacher: Callable[[], nn.Module],
    layers: list[str],
    data: DataModule,
    device: torch.device,
    path: Path,
    key: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if path.exists():
        stored = load_torch(path)
        if stored.get("key") == key:
            console.print(f"  reusing cached teacher outputs ({path.name})")
            return stored["logits"], stored.get("features", {})
    splits = [data.train] + ([data.unlabeled] if data.unlabeled is not None else [])
    images = sum(len(split) for split in splits)
    what = "logits and " + ", ".join(layers) if layers else "logits"
    console.print(f"  computing teacher {what} once for {images:,} training images")
    logits, features = _teacher_pass(teacher(), layers, data, splits, device)
    if distributed.is_main():
        save_torch({"key": key, "logits": logits, "features": features}, path)
    return logits, features


@torch.no_grad()
def _teacher_pass(
    teacher: nn.Module,
    layers: list[str],
    data: DataModule,
    splits: list[Split],
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the ``layers``' outputs of the splits, in split order. Logits are small and
    come back to the host once a split (``predict``); features are large and come back batch
    by batch."""
    features: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with tapped(teacher, layers, "the teacher") as taps:

        def keep_features() -> None:
            for name in layers:
                features[name].append(taps.outputs[name].float().cpu().contiguous())

        logits = torch.cat([predict(teacher, data, s, device, keep_features) for s in splits])
    return logits, {name: torch.cat(parts) for name, parts in features.items()}
