"""Accuracy of a PyTorch model on a split, and its logits (reused as cached soft targets)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compress import distributed
from compress.data.module import DataModule, Split


@torch.no_grad()
def predict(
    model: nn.Module,
    data: DataModule,
    split: Split,
    device: torch.device,
    after_batch: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Logits for every image of a split, in split order, in eval mode, on the host. They stay
    on ``device`` until the split is done: on a GPU a copy back per batch would stall the host
    each time, and logits are small. ``after_batch`` runs after each forward (to collect what
    hooks saw)."""
    was_training = model.training
    model.eval()
    outputs = []
    for x, _, _ in data.eval_batches(split, device=device):
        x = x.contiguous(memory_format=torch.channels_last)
        outputs.append(model(x).float())
        if after_batch is not None:
            after_batch()
    model.train(was_training)
    return torch.cat(outputs).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1 and top5 as fractions in [0, 1] (top5 = top1 when there are <= 5 classes)."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hits = topk == labels[:, None]
    return {
        "top1": round(hits[:, 0].double().mean().item(), 6),
        "top5": round(hits.any(1).double().mean().item(), 6),
    }


def evaluate(
    model: nn.Module, data: DataModule, split: Split, device: torch.device
) -> dict[str, float]:
    """top1/top5 on a split. Under torchrun every process must call it: each scores its slice
    of the split and the hit counts are summed, so the result equals one process scoring all
    (the model's weights and buffers must be the same on every process)."""
    world = distributed.world_size()
    if world == 1:
        return accuracy(predict(model, data, split, device), split.labels)
    rows = torch.tensor(distributed.shard(len(split), distributed.rank(), world))
    part = split.take(rows)
    hits = [0.0, 0.0]
    if len(part):
        logits = predict(model, data, part, device)
        k = min(5, logits.shape[1])
        found = logits.topk(k, dim=1).indices == part.labels[:, None]
        hits = [found[:, 0].sum().item(), found.any(1).sum().item()]
    top1, top5 = distributed.all_reduce(hits)
    return {"top1": round(top1 / len(split), 6), "top5": round(top5 / len(split), 6)}
