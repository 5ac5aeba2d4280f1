"""Moving batches to the device without stalling the host."""

from __future__ import annotations

import torch


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``. For a GPU it is first copied to pinned (page-locked) host memory:
    a copy from pageable memory blocks the host until the GPU has drained its queue, while one
    from pinned memory is queued and the host goes on preparing the next batch."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)
