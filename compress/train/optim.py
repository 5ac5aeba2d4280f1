"""Optimizer and a per-step learning-rate schedule (warm-up, then cosine/one-cycle/step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from compress.config.base import TrainConfig


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``steps`` when set, else epochs x steps per epoch."""
    return cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch


def total_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Epochs the loop starts: the last one may stop part-way when ``steps`` is set."""
    if cfg.steps is None:
        return cfg.epochs
    return -(-cfg.steps // steps_per_epoch)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of cfg.lr at a global step; a pure function so resumes need no state."""
    total = max(1, total_steps(cfg, steps_per_epoch))
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warmup = warmup or max(1, int(0.15 * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.schedule in ("cosine", "onecycle"):
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.step_gamma ** sum(epoch >= m for m in cfg.step_milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
