"""One plain training loop for every stage that trains (teacher, distill, later prune and qat).

Read it top to bottom: for each epoch, for each batch: forward through ``step_loss``, check the
loss is finite, backward, step, log. At every epoch end (and every N steps if asked) the whole
state is written atomically, so ``compress run`` after a kill continues where it stopped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress import distributed
from compress.config.base import TrainConfig
from compress.data.module import DataModule
from compress.data.transfer import to_device
from compress.errors import TrainingError
from compress.io import load_torch, save_torch
from compress.train.evaluate import evaluate
from compress.train.optim import build_optimizer, lr_factor, set_lr, total_epochs, total_steps
from compress.ui import console, progress

# step_loss(model, companion, x, y, rows) -> (student logits, loss). ``model`` and ``companion``
# are the modules to call: wrapped in DistributedDataParallel under torchrun, so their gradients
# are averaged over the processes. ``rows`` index the training split.
StepLoss = Callable[
    [nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATS_EVERY_S = 0.5  # how often the progress bar's loss / accuracy are read off the device


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_at: str | None = None
    skipped_batches: int = 0
    companion: nn.Module | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds of work around the loop


def fit(
    model: nn.Module,
    step_loss: StepLoss,
    data: DataModule,
    cfg: TrainConfig,
    *,
    device: torch.device,
    checkpoint: Path,
    fingerprint: str,
    label: str,
    augment: str,
    companion: nn.Module | None = None,
    tensorboard_dir: Path | None = None,
    seed: int | None = None,
    unlabeled_batch: int = 0,
) -> FitResult:
    """Train ``model`` in place; on return it holds the selected (last or best-val) weights.

    ``companion`` is a module trained and checkpointed alongside (a distillation loss with
    projection heads, peer students or an EMA teacher); it is not part of the saved model.
    Under torchrun each process trains on its slice of every global batch; rank 0 alone writes
    the checkpoint and TensorBoard logs, and every process ends with rank 0's weights.
    ``unlabeled_batch`` images of ``data.unlabeled`` join every batch (label -1); the running
    loss and accuracy count the labelled images.
    """
    companion = companion or nn.Module()
    rank, world = distributed.rank(), distributed.world_size()
    fmt = memory_format(cfg, device)
    model.to(device, memory_format=fmt)
    companion.to(device, memory_format=fmt)  # a peer network or regressors: same format
    own = [p for p in model.parameters() if p.requires_grad]
    companions = [p for p in companion.parameters() if p.requires_grad]
    optimizer = build_optimizer(own + companions, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    peak_lr = cfg.lr * {"none": 1.0, "linear": world, "sqrt": world**0.5}[cfg.lr_scaling]
    batch_size = cfg.batch_size or data.cfg.batch_size
    steps_per_epoch = data.steps_per_epoch(batch_size, world)
    epochs, last_step = total_epochs(cfg, steps_per_epoch), total_steps(cfg, steps_per_epoch)
    result = FitResult()
    state = _resume(checkpoint, fingerprint, model, companion, optimizer, scaler)
    epoch, skip = state.get("epoch", 0), state.get("step_in_epoch", 0)
    result.history = state.get("history", [])
    best = state.get("best", {"top1": -1.0, "state_dict": None})
    if state:
        result.resumed_at = f"epoch {epoch + 1}, step {skip}"
        console.print(f"  resuming {label} from {result.resumed_at} ({checkpoint.name})")
    writer = _tensorboard(tensorboard_dir, purge_step=epoch * steps_per_epoch + skip)
    # compiled for the training calls only: evaluation and checkpoints use ``model`` itself.
    # Compiled inside DDP, not around it: torch.compile of the DDP wrapper traces nothing and
    # runs eager (torch 2.14, two gloo processes; tests/test_distributed.py checks it compiles)
    net = distributed.wrap(compiled(model, fmt) if cfg.compile else model, device)
    # a loss's heads need not all take part in every step (a mix, a warm-up)
    loss_net = distributed.wrap(companion, device, find_unused=True)
    save = functools.partial(_save, checkpoint, fingerprint, model, companion, optimizer, scaler)

    # the stop policy reads each step's finite flag one step late (_QueuedCheck); skipping a
    # batch, or agreeing on it across processes, needs the answer before the step is taken
    late = world == 1 and cfg.nan_policy == "stop"
    pending: _QueuedCheck | None = None
    model.train()
    with progress() as bars:
        task = bars.add_task(label, total=last_step, stats="")
        bars.update(task, completed=epoch * steps_per_epoch + skip)
        while epoch < epochs:
            # running sums of this process's share of the epoch; a mid-epoch resume continues
            # them (the checkpoint holds the sums over all processes, taken up by rank 0)
            saved = state.pop("running", None) if skip else None
            run = {"seen": 0, "correct": 0, "loss_sum": 0.0, "seconds": 0.0}
            if saved:
                run = saved if rank == 0 else {**run, "seconds": saved["seconds"]}
            started = time.perf_counter() - run["seconds"]
            # the epoch's running correct count and loss sum live on the device, read when shown
            # or saved: a read every step would stall a GPU on the host every step (the finite
            # check is the one read left). Continued from the saved sums after a resume, so a
            # resumed epoch adds in the same order as an uninterrupted one.
            sums = torch.tensor([run["correct"], run["loss_sum"]], dtype=torch.float64,
                                device=device)  # fmt: skip
            shown_at = 0.0
            batches = data.train_batches(epoch, batch_size, augment, skip, seed, rank, world,
                                         unlabeled=unlabeled_batch, device=device)  # fmt: skip
            for step, (x, y, rows) in enumerate(batches, start=skip):
                global_step = epoch * steps_per_epoch + step
                if global_step >= last_step:  # ``steps`` ends the last epoch part-way
                    break
                set_lr(optimizer, peak_lr * lr_factor(global_step, cfg, steps_per_epoch))
                labelled = int((y >= 0).sum())  # on the host, before the copy
                x = x.contiguous(memory_format=fmt)  # normalised and augmented on the device
                y = to_device(y, device)
                with torch.autocast(device.type, AUTOCAST.get(cfg.precision),
                                    enabled=cfg.precision != "fp32"):  # fmt: skip
                    logits, loss = step_loss(net, loss_net, x, y, rows)
                optimizer.zero_grad(set_to_none=True)
                if late:
                    queued = _QueuedCheck.behind(loss, epoch, step, device)
                elif not _finite_everywhere(loss, world):
                    # the backward still runs so every process's DDP finishes the step together;
                    # its gradients are dropped
                    loss.backward()
                    optimizer.zero_grad(set_to_none=True)
                    result.skipped_batches += _non_finite(loss, cfg, epoch, step, checkpoint)
                    continue
                scaler.scale(loss).backward()
                if cfg.clip_grad_norm:  # the student and the loss's own modules each
                    scaler.unscale_(optimizer)
                    for group in (own, companions) if companions else (own,):
                        torch.nn.utils.clip_grad_norm_(group, cfg.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                if late:  # the previous step's flag, now that this step is queued
                    _stop_if_non_finite(pending, cfg, checkpoint)
                    pending = queued

                run["seen"] += labelled
                sums[0] += (logits.detach().argmax(1) == y).sum()
                sums[1] += loss.detach().double() * labelled
                run["seconds"] = time.perf_counter() - started
                if run["seconds"] - shown_at >= STATS_EVERY_S:
                    _read(run, sums)
                    shown_at = run["seconds"]
                    bars.update(task, stats=_stats(run, epoch, epochs, world))
                bars.update(task, advance=1)
                if writer and global_step % 10 == 0:
                    writer.add_scalar("train/loss", loss.item(), global_step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)
                every = cfg.checkpoint_every_steps
                if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                    _stop_if_non_finite(pending, cfg, checkpoint)  # before a save: none with NaN
                    pending = None
                    _read(run, sums)
                    save(epoch, step + 1, result.history, best, _summed(run))

            _stop_if_non_finite(pending, cfg, checkpoint)
            pending = None
            _read(run, sums)
            if run["seen"]:
                bars.update(task, stats=_stats(run, epoch, epochs, world))
            total = _summed(run)
            seconds = time.perf_counter() - started
            record = {
                "epoch": epoch + 1,
                "loss": total["loss_sum"] / max(1, total["seen"]),
                "train_top1": total["correct"] / max(1, total["seen"]),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "images_per_s": total["seen"] / max(1e-9, seconds),
            }
            if data.val is not None:
                distributed.sync_buffers(model, companion)
                record["val_top1"] = evaluate(model, data, data.val, device)["top1"]
                model.train()
                if record["val_top1"] > best["top1"]:
                    best = {"top1": record["val_top1"], "epoch": epoch + 1,
                            "state_dict": _cpu_state(model)}  # fmt: skip
            result.history.append(record)
            if writer:
                for key, value in record.items():
                    writer.add_scalar(f"epoch/{key}", value, epoch + 1)
            epoch, skip = epoch + 1, 0
            save(epoch, 0, result.history, best, None)

    if writer:
        writer.close()
    distributed.sync_buffers(model, companion)
    if cfg.select == "best_val" and best.get("state_dict") is not None:
        model.load_state_dict(best["state_dict"])
        console.print(f"  kept epoch {best['epoch']} (best val top1 {best['top1']:.4f})")
    return result


def _read(run: dict[str, float], sums: torch.Tensor) -> None:
    """Copy the device-side correct count and loss sum into ``run`` (one host read)."""
    correct, run["loss_sum"] = sums.tolist()
    run["correct"] = int(correct)


def _stats(run: dict[str, float], epoch: int, epochs: int, world: int) -> str:
    rate = run["seen"] * world / max(1e-9, run["seconds"])
    return (
        f"ep {epoch + 1}/{epochs} loss {run['loss_sum'] / run['seen']:.3f} "
        f"acc {run['correct'] / run['seen']:.3f} {rate:,.0f} img/s"
    )


@dataclass
class _QueuedCheck:
    """Whether a step's loss is finite, copied to host memory behind that step's forward and
    read once the next step is queued: the read then waits for this step's forward only, not
    for the step just queued, so on a GPU the host stays a step ahead, preparing the next batch
    while the GPU trains (a read right away would drain the GPU's queue every step). The price:
    a NaN step's update is applied before the loop stops, which the stop policy can afford
    (the checkpoints are written after the check)."""

    loss: torch.Tensor
    finite: torch.Tensor
    copied: torch.cuda.Event | None
    epoch: int
    step: int

    @classmethod
    def behind(cls, loss: torch.Tensor, epoch: int, step: int, device: torch.device
               ) -> _QueuedCheck:  # fmt: skip
        finite, copied = torch.isfinite(loss.detach()), None
        if device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            finite = host.copy_(finite, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        return cls(loss.detach(), finite, copied, epoch, step)

    def is_finite(self) -> bool:
        if self.copied is not None:
            self.copied.synchronize()
        return bool(self.finite)


def _stop_if_non_finite(pending: _QueuedCheck | None, cfg: TrainConfig, ckpt: Path) -> None:
    """Raise the stop policy's error if the queued step's loss was not finite."""
    if pending is not None and not pending.is_finite():
        _non_finite(pending.loss, cfg, pending.epoch, pending.step, ckpt)


def _finite_everywhere(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every process (they must skip a batch together)."""
    finite = bool(torch.isfinite(loss).item())
    if world == 1:
        return finite
    return distributed.all_reduce([float(finite)], op="min")[0] > 0


def _summed(run: dict[str, float]) -> dict[str, float]:
    """The running sums over all processes (seconds: this process's)."""
    seen, correct, loss_sum = distributed.all_reduce([run["seen"], run["correct"], run["loss_sum"]])
    return {"seen": int(seen), "correct": int(correct), "loss_sum": loss_sum,
            "seconds": run["seconds"]}  # fmt: skip


def _non_finite(loss: torch.Tensor, cfg: TrainConfig, epoch: int, step: int, ckpt: Path) -> int:
    where = f"epoch {epoch + 1}, step {step}"
    if cfg.nan_policy == "skip":
        console.print(f"  [yellow]skipped a batch with loss {loss.item()} at {where}[/]")
        return 1
    kept = f"last good checkpoint kept at {ckpt}" if ckpt.exists() else "no checkpoint yet"
    raise TrainingError(
        f"loss became {loss.item()} at {where}; {kept}. Lower the learning rate, clip the "
        "gradients (clip_grad_norm: 2.0), or set nan_policy: skip to drop such batches."
    )


def memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """channels_last when asked, except for bf16 on a CPU: there torch 2.14.1's depthwise
    convolutions can leave stale memory (NaN) in their weight gradients in channels_last
    (benchmarks/bf16_depthwise_check.py counts it for the installed torch)."""
    if not cfg.channels_last:
        return torch.contiguous_format
    if device.type == "cpu" and cfg.precision == "bf16":
        _say_bf16_cpu_is_contiguous()
        return torch.contiguous_format
    return torch.channels_last


def compiled(model: nn.Module, fmt: torch.memory_format) -> nn.Module:
    """``torch.compile(model)`` keeping ``fmt``. Inductor on a CPU otherwise turns every
    convolution channels_last ("layout optimization"), which undoes the bf16 contiguous rule
    above: with it, 198 of 200 compiled bf16 depthwise weight gradients came back non-finite,
    0 of 200 without (torch 2.14.1; benchmarks/bf16_depthwise_check.py)."""
    if fmt == torch.channels_last:
        return torch.compile(model)
    return torch.compile(model, options={"layout_optimization": False})


@functools.cache  # once a process: a bf16 grid on a CPU would print it for every cell
def _say_bf16_cpu_is_contiguous() -> None:
    console.print(
        "  [yellow]bf16 on a CPU trains in the contiguous format, not channels_last: "
        "torch's CPU depthwise-conv gradients go wrong in it (README: When things go wrong)[/]"
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _save(
    path: Path,
    fingerprint: str,
    model: nn.Module,
    companion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    step_in_epoch: int,
    history: list[dict[str, float]],
    best: dict[str, Any],
    running: dict[str, float] | None,
) -> None:
    if not distributed.is_main():
        return
    save_torch(
        {
            "fingerprint": fingerprint,
            "model": _cpu_state(model),
            "companion": _cpu_state(companion),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "history": history,
            "best": best,
            "running": running,
            "torch_rng": torch.get_rng_state(),
        },
        path,
    )


def _resume(
    path: Path,
    fingerprint: str,
    model: nn.Module,
    companion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """Load a checkpoint written for this exact stage config; anything else starts fresh.

    Under torchrun every process reads the file rank 0 wrote."""
    if not path.exists():
        return {}
    state = load_torch(path)
    if state.get("fingerprint") != fingerprint:
        console.print(f"  {path.name} is from a different config; starting over")
        return {}
    model.load_state_dict(state["model"])
    companion.load_state_dict(state.get("companion", {}))
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return state


def _tensorboard(log_dir: Path | None, purge_step: int) -> Any:
    if log_dir is None or not distributed.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a trimmed install should still train
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step or None)
