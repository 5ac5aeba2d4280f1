"""Moving batches to the device without stalling the host."""

from __future__ import annotations

import torch


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``. For a GPU, a host tensor is first copied to pinned (page-locked)
    memory: a copy from pageable memory blocks the host until the GPU has drained its queue,
    while one from pinned memory is queued and the host goes on preparing the next batch. A
    batch already there is returned as it is (``Tensor.to`` does that)."""
    if device.type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)
