"""`compress quantize` on a foreign ONNX file: INT8 accuracy and speed against its FP32 original.

    .venv/bin/python benchmarks/onnx_quantize.py [--work-dir runs/onnx_quantize] [--epochs 1]

What a user who never touches our pipelines does: train a torchvision ResNet-18 (1-channel first
conv, Fashion-MNIST at 28 px) with a plain PyTorch loop, export it with ``torch.onnx.export`` and
an odd input name (no compress metadata), then quantize the file with the same function
``compress quantize`` calls. Reports FP32 and INT8 top-1 on the whole test split, their
agreement, the side-by-side (interleaved) speed ratio at batch 1 and 32, which ops stayed float,
and the CPU. Writes benchmarks/results/onnx_quantize.json and .md. The trained FP32 file is kept
in the work dir and reused (delete it to retrain). A measurement, not a test: it reports the
targets (INT8 within 1 point, >= 1.5x at batch 32) and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

INPUT_NAME = "input.1:0"  # an odd name, as exporters of other frameworks write them
RESULTS = Path(__file__).resolve().parent / "results"


def build_model() -> nn.Module:
    """torchvision's ResNet-18 with a 1-channel first conv and a 10-class head."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def train(
    model: nn.Module, epochs: int, subset: int | None, batch_size: int = 128, lr: float = 0.1
) -> float:
    """A plain loop: SGD with Nesterov momentum, cosine learning rate, flips; returns seconds
    spent. Short on purpose (2 shared cores): the figure that matters is INT8 against FP32."""
    from compress.config.base import DataConfig
    from compress.data.module import DataModule

    data = DataModule(DataConfig(dataset="fashion-mnist", train_subset=subset), seed=0)
    steps = epochs * data.steps_per_epoch(batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    start = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(epochs):
        for x, y, _ in data.train_batches(epoch, batch_size, augment="flip"):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            step += 1
            if step % 50 == 0:
                print(f"  step {step}/{steps} loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - start


def export_like_a_user(model: nn.Module, path: Path) -> None:
    """``torch.onnx.export`` with a dynamic batch, an odd input name, and nothing else."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.randn(2, 1, 28, 28),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=["scores"],
        dynamic_axes={INPUT_NAME: {0: "n"}, "scores": {0: "n"}},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/onnx_quantize"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--train-subset", type=int, default=12000, help="training images (0: all 60,000)"
    )
    parser.add_argument("--calibration-images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32 = args.work_dir / "resnet18_fp32.onnx"
    train_seconds = None
    if not fp32.is_file():
        model = build_model()
        print(f"training torchvision resnet18 (1-channel stem) for {args.epochs} epoch(s)")
        train_seconds = train(model, args.epochs, args.train_subset or None)
        export_like_a_user(model, fp32)
        print(f"trained in {train_seconds:.0f} s; exported {fp32}")
    else:
        print(f"reusing {fp32} (delete it to retrain)")
    report(fp32, args, train_seconds)


def report(fp32: Path, args: argparse.Namespace, train_seconds: float | None) -> None:
    from compress.io import write_json, write_text
    from compress.ortquant.quantize import QuantizeRequest, quantize_and_measure

    int8 = args.work_dir / "resnet18_int8.onnx"
    int8.unlink(missing_ok=True)
    request = QuantizeRequest(
        source=fp32,
        out=int8,
        dataset="fashion-mnist",
        calibration_images=args.calibration_images,
        batch_sizes=(1, 32),
        threads=args.threads,
        rounds=args.rounds,
    )
    results = quantize_and_measure(request)
    results["benchmark"] = {
        "command": "benchmarks/onnx_quantize.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "model": "torchvision.models.resnet18(num_classes=10), conv1 1-channel 7x7/2",
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "train_seconds": train_seconds,
        "targets": {"top1_loss_points_max": 1.0, "speedup_batch32_min": 1.5},
    }
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "onnx_quantize.json", results)
    write_text(RESULTS / "onnx_quantize.md", markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    acc, env = r["accuracy"], r["environment"]
    fp32_top1, int8_top1 = acc["fp32"]["top1"], acc["int8"]["top1"]
    lines = [
        "# `compress quantize` on a torchvision ResNet-18 exported by torch.onnx.export",
        "",
        f"Command: `.venv/bin/python {r['benchmark']['command']}`",
        f"CPU: {env['cpu']} ({', '.join(env['isa'])}), {env['cores']} cores, "
        f"{env['threads']} threads; onnxruntime {env['versions'].get('onnxruntime')}",
        f"Settings: {json.dumps(r['settings'])}",
        "",
        "| file | top-1 | top-5 | size | p50 batch 1 | p50 batch 32 |",
        "|---|---|---|---|---|---|",
    ]
    speed = r["speed"]
    for name in ("fp32", "int8"):
        p50 = [f"{speed[bs][name]['p50']:.3f} ms" for bs in speed]
        lines.append(
            f"| {name.upper()} | {100 * acc[name]['top1']:.2f}% | {100 * acc[name]['top5']:.2f}% "
            f"| {r['files'][name]['bytes'] / 1e6:.1f} MB | " + " | ".join(p50) + " |"
        )
    ratios = ", ".join(f"x{speed[bs]['ratio']:.2f} at batch {bs}" for bs in speed)
    lines += [
        "",
        f"- INT8 vs FP32 top-1: {100 * (int8_top1 - fp32_top1):+.2f} points on "
        f"{acc['images']:,} test images; agreement {100 * acc['agreement']:.2f}%",
        f"- speed (FP32 p50 / INT8 p50, interleaved): {ratios}",
        f"- onnxruntime kernels: {json.dumps(r['runtime_ops'])}",
        f"- ops left in float: {json.dumps(r['float_ops'])}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
