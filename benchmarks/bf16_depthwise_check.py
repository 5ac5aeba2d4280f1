"""Does this torch still leave stale memory in bf16 channels-last depthwise weight gradients?

    PYTHONPATH=. .venv/bin/python benchmarks/bf16_depthwise_check.py [--trials 200]

With torch 2.14.1 on a CPU, a stride-2 depthwise 3x3 convolution on 1x1 maps, under bf16
autocast in channels_last, can return a weight gradient holding whatever was in memory: NaN
when the allocator hands back a block we filled with NaN first. Training then goes NaN a step
or two in (MobileNetV2's late blocks see 1x1 maps at small image sizes), so a bf16 run on a
CPU trains in the contiguous format (``compress.train.loop.memory_format``). Run this after a
torch upgrade: when it reports 0 for channels_last on several machines, that rule and the
README's "When things go wrong" row can go. torch.compile on a CPU makes convolutions
channels_last by itself (inductor's layout optimization), so it also counts compiled forwards:
as inductor leaves them, and as ``train.compile`` compiles a contiguous model
(``compress.train.loop.compiled``, layout optimization off). Prints the counts and writes
benchmarks/results/bf16_depthwise_check.json (with the CPU). A check of the library, never a
test.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from compress.bench.environment import environment
from compress.train.loop import compiled

RESULTS = Path(__file__).parent / "results"


def broken_gradients(
    memory_format: torch.memory_format,
    trials: int,
    compile_with: Callable[[nn.Module], nn.Module] | None = None,
) -> int:
    """How many of ``trials`` weight gradients hold a non-finite value; the forward runs
    through ``compile_with(conv)`` when given."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 144, 1, 1, generator=gen).contiguous(memory_format=memory_format)
    grad = torch.randn(128, 144, 1, 1, generator=gen).to(torch.bfloat16)
    conv = nn.Conv2d(144, 144, 3, stride=2, padding=1, groups=144, bias=False)
    conv = conv.to(memory_format=memory_format)
    forward = compile_with(conv) if compile_with else conv
    broken = 0
    for _ in range(trials):
        conv.zero_grad()
        stale = torch.full((1 << 20,), float("nan"), dtype=torch.bfloat16)
        del stale  # its block goes back to the allocator, NaN-filled
        with torch.autocast("cpu", torch.bfloat16):
            y = forward(x)
        y.backward(grad.contiguous(memory_format=memory_format))
        broken += not bool(torch.isfinite(conv.weight.grad).all())
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    contiguous = torch.contiguous_format
    counts = {
        "channels_last": broken_gradients(torch.channels_last, args.trials),
        "contiguous": broken_gradients(contiguous, args.trials),
        "contiguous, torch.compile": broken_gradients(contiguous, args.trials, torch.compile),
        "contiguous, train.compile": broken_gradients(
            contiguous, args.trials, lambda conv: compiled(conv, contiguous)
        ),
    }
    result = {"environment": environment(None), "trials": args.trials,
              "non_finite_weight_gradients": counts}  # fmt: skip
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_depthwise_check.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
