"""Accuracy of a PyTorch model on a split, and its logits (reused as cached soft targets)."""

from __future__ import annotations

import torch
from torch import nn

from compress.data.module import DataModule, Split


@torch.no_grad()
def predict(model: nn.Module, data: DataModule, split: Split, device: torch.device) -> torch.Tensor:
    """Logits for every image of a split, in split order, in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for x, _, _ in data.eval_batches(split):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        outputs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


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
    return accuracy(predict(model, data, split, device), split.labels)
