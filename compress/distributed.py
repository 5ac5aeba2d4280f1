"""Several processes under ``torchrun``: who is who, and the few collectives the tool needs.

Every process runs the whole ``compress run``. Training stages run on all of them (each trains
on its slice of every global batch, DistributedDataParallel averages the gradients); stages that
do not train (export, bench) and every write (artifacts, checkpoints, the manifest) happen on
rank 0 only, while the others wait at a barrier and then read what rank 0 wrote. The run
directory must therefore be on a file system every node sees.

With one process (no ``WORLD_SIZE`` > 1 in the environment) every helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compress.errors import CompressError


def env_world_size() -> int:
    """Processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when torchrun started several processes; returns this rank's
    device (``cuda:LOCAL_RANK`` on GPUs). nccl on CUDA, gloo on CPU."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise CompressError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise CompressError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs on this node; "
                "give torchrun --nproc-per-node at most the GPU count"
            )
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=60))
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a decision, a small dict of metrics)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or min/max) of a few numbers over all ranks, in float64."""
    if world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else None
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    dist.all_reduce(tensor, op=ops[op])
    return tensor.tolist()


def sync_buffers(*modules: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP does this at each
    forward; after the last one the ranks' statistics differ by their own last batch."""
    if world_size() == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. computes and saves a cache); the others run it after,
    and find what rank 0 wrote."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(n: int, part: int, parts: int) -> range:
    """The ``part``-th of ``parts`` contiguous, near-equal slices of range(n)."""
    return range(n * part // parts, n * (part + 1) // parts)


def wrap(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train and it has trainable
    parameters; itself otherwise. Parameters are broadcast from rank 0 here."""
    if world_size() == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def _nccl() -> bool:
    return dist.get_backend() == "nccl"
