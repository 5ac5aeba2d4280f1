"""What compress's training loop costs over a bare PyTorch loop, measured side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/train_overhead.py [--steps 30] [--rounds 3]

The quickstart's teacher (ResNet-34, compact stem, batch 256, CE) and distill stage
(MobileNetV2, compact stem, batch 128, kd T=4 alpha=0.5, gradients clipped at norm 2), models,
batch sizes and training settings read from the pipeline, on
a fixed Fashion-MNIST subset of ``--steps`` batches of the larger batch size (the other stage
makes proportionally more steps), with the pipeline's thread count (default: every core).
Each round times, in turn:

- compress: the function the stage calls (``train_teacher`` / ``distill_in_stage``: the real
  ``fit`` with its progress bar, running metrics, LR schedule, finite-loss check, TensorBoard
  and end-of-epoch checkpoint), wall clock from call to return;
- bare: a hand-written loop over the same pre-normalised tensors (teacher forward under
  no_grad, student forward, loss, backward, SGD step) with the same optimizer settings.

The distill stage runs twice: with a live teacher (``cache_teacher: false``) against a bare loop
with a live teacher, and with the cached teacher logits (already on disk, as for a second epoch
or stage) against a bare loop indexing the same logits. Rounds interleave the variants so load
from other processes hits them alike; the ratio is the median of the per-round ratios.
Writes benchmarks/results/train_overhead.json and .md. A measurement, never a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress.bench.environment import host
from compress.config.load import load_pipeline
from compress.data.module import get_data
from compress.io import sha256_file
from compress.models import build_model, save_model
from compress.runner import configure_torch
from compress.stages.base import StageContext, StageInput, load_stages
from compress.stages.common import distill_in_stage, model_spec
from compress.train.optim import lr_factor

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    """The CPU and the vector-instruction flags that matter for these kernels, in one line."""
    facts = host()
    return f"{facts['cpu']} ({facts['threads']} threads; {' '.join(facts['isa']) or 'no AVX2'})"


def context(pipeline, run_dir: Path, stage: str, inputs: dict, tag: str) -> StageContext:
    """A fresh stage folder and fingerprint per call, so nothing resumes from an earlier round."""
    stage_dir = run_dir / f"{stage}-{tag}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(stage, run_dir, stage_dir, inputs, tag, torch.device("cpu"),
                        data_config=pipeline.data, seed=pipeline.seed)  # fmt: skip


def bare_loop(
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    batch: int,
    cfg,
    loss_of: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """The minimal loop: slice a batch, set the stage's learning rate for the step (the same
    schedule, so both train the same network), forward, loss, backward, the stage's gradient
    clipping when it sets ``clip_grad_norm`` (part of the recipe, not of the tool), SGD step."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)  # fmt: skip
    order = torch.randperm(len(x_all))
    steps = len(x_all) // batch
    for b in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(b, cfg, steps)
        rows = order[b * batch : (b + 1) * batch]
        x, y = x_all[rows].contiguous(memory_format=torch.channels_last), y_all[rows]
        loss = loss_of(model(x), y, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        opt.step()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, t: float, alpha: float):
    soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    log_target=True, reduction="batchmean")  # fmt: skip
    return alpha * F.cross_entropy(student, y) + (1 - alpha) * t * t * soft


def timed(fn: Callable[[str], object], tag: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn(tag)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(tag)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_stages()
    from compress.stages.teacher import train_teacher  # registered by load_stages

    base = load_pipeline(Path(args.pipeline))
    stages = dict(base.stage_items())
    t_cfg, d_cfg = stages["teacher"], stages["distill"]
    d_batch = d_cfg.batch_size or base.data.batch_size
    t_batch = t_cfg.batch_size or base.data.batch_size
    # the same images for both stages (one DataModule): the teacher's smaller batches make more
    # steps of it
    subset = args.steps * max(d_batch, t_batch)
    pipeline = base.model_copy(
        update={"data": base.data.model_copy(update={"train_subset": subset, "test_subset": 64})}
    )
    t_cfg = t_cfg.model_copy(update={"epochs": 1})
    configure_torch(pipeline)
    live_cfg = d_cfg.model_copy(update={"epochs": 1, "cache_teacher": False})
    cached_cfg = d_cfg.model_copy(update={"epochs": 1, "cache_teacher": True})
    kd = d_cfg.method
    data = get_data(pipeline.data, pipeline.seed)
    x_all = data.normalize(data.train.images)
    y_all = data.train.labels

    with tempfile.TemporaryDirectory(prefix="compress-overhead-") as tmp:
        run_dir = Path(tmp)
        t_spec = model_spec(t_cfg.model, data)
        teacher = build_model(t_spec)
        teacher_file = run_dir / "teacher" / "model.pt"
        teacher_file.parent.mkdir()
        save_model(teacher, t_spec, teacher_file, {"role": "teacher", "metrics": {}})
        entry = {"artifacts": {"model": {"path": "teacher/model.pt",
                                         "sha256": sha256_file(teacher_file)}}}  # fmt: skip
        inputs = {"teacher": StageInput("teacher", "teacher", entry, run_dir)}
        teacher = teacher.to(memory_format=torch.channels_last).eval().requires_grad_(False)
        s_spec = model_spec(d_cfg.student, data)
        # fill the run's logits cache once, as the first epoch (or an earlier stage) would
        warm = context(pipeline, run_dir, "distill", inputs, "warm")
        distill_in_stage(build_model(s_spec), cached_cfg, cached_cfg, warm, "warm-up")
        cached = next((run_dir / "cache").glob("teacher_logits-*.pt"))
        logits = torch.load(cached, weights_only=True)["logits"]

        def live_kd(s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t = teacher(x_all[rows].contiguous(memory_format=torch.channels_last))
            return kd_loss(s, t, y, kd.temperature, kd.alpha)

        def cached_kd(s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return kd_loss(s, logits[rows], y, kd.temperature, kd.alpha)

        def ce(s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(s, y)

        variants: dict[str, dict[str, Callable[[str], object]]] = {
            "teacher (CE)": {
                "compress": lambda tag: train_teacher(
                    build_model(t_spec), t_cfg, context(pipeline, run_dir, "teacher", {}, tag),
                    "teacher"),
                "bare": lambda tag: bare_loop(
                    build_model(t_spec).to(memory_format=torch.channels_last),
                    x_all, y_all, t_batch, t_cfg, ce),
            },
            "distill, live teacher": {
                "compress": lambda tag: distill_in_stage(
                    build_model(s_spec), live_cfg, live_cfg,
                    context(pipeline, run_dir, "distill", inputs, tag), "distill"),
                "bare": lambda tag: bare_loop(
                    build_model(s_spec).to(memory_format=torch.channels_last),
                    x_all, y_all, d_batch, d_cfg, live_kd),
            },
            "distill, cached logits": {
                "compress": lambda tag: distill_in_stage(
                    build_model(s_spec), cached_cfg, cached_cfg,
                    context(pipeline, run_dir, "distill", inputs, tag), "distill"),
                "bare": lambda tag: bare_loop(
                    build_model(s_spec).to(memory_format=torch.channels_last),
                    x_all, y_all, d_batch, d_cfg, cached_kd),
            },
        }  # fmt: skip
        times: dict[str, dict[str, list[tuple[float, float]]]] = {
            v: {"compress": [], "bare": []} for v in variants
        }
        for r in range(args.rounds):
            for v, (name, runs) in enumerate(variants.items()):
                # alternate which goes first, so neither always follows the other
                order = ["compress", "bare"] if r % 2 == 0 else ["bare", "compress"]
                for who in order:
                    tag = f"{who}-{r}-{v}"  # unique: a repeated tag would resume its checkpoint
                    times[name][who].append(timed(runs[who], tag))
                c, b = times[name]["compress"][-1][0], times[name]["bare"][-1][0]
                print(f"round {r + 1}: {name}: compress {c:.2f}s bare {b:.2f}s -> {b / c:.3f}x",
                      file=sys.stderr)  # fmt: skip
            # written after every round, so a run cut short still leaves its figures
            report(times, args, subset, rounds=r + 1, final=r + 1 == args.rounds)


def report(times: dict, args: argparse.Namespace, subset: int, rounds: int, final: bool) -> None:
    """Median ratios of the rounds so far -> JSON and Markdown (printed after the last)."""
    rows = []
    for name, t in times.items():
        images = subset
        ratios = [b[0] / c[0] for c, b in zip(t["compress"], t["bare"], strict=True)]
        cpu_ratios = [b[1] / c[1] for c, b in zip(t["compress"], t["bare"], strict=True)]
        rate = {who: round(images / statistics.median(x[0] for x in t[who]), 1) for who in t}
        rows.append({
            "stage": name,
            "images_per_round": images,
            "compress_images_per_s": rate["compress"],
            "bare_images_per_s": rate["bare"],
            "ratio": round(statistics.median(ratios), 3),
            "ratio_cpu_seconds": round(statistics.median(cpu_ratios), 3),
            "ratios": [round(x, 3) for x in ratios],
        })  # fmt: skip
    result = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "steps": args.steps,
        "rounds": rounds,
        "command": "PYTHONPATH=. python benchmarks/train_overhead.py "
        f"--steps {args.steps} --rounds {args.rounds}",
        "rows": rows,
    }
    table = [
        f"CPU: {result['cpu']}; torch {result['torch']}; {args.steps} steps x {rounds} "
        "interleaved rounds; ratio = compress images/s / bare images/s (median of rounds)",
        "",
        "| stage | compress img/s | bare img/s | ratio (wall) | ratio (CPU s) |",
        "|---|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['stage']} | {r['compress_images_per_s']:,.0f} | {r['bare_images_per_s']:,.0f} | "
        f"{r['ratio']:.3f}x | {r['ratio_cpu_seconds']:.3f}x |"
        for r in rows
    ]
    if final:
        print("\n".join(table))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "train_overhead.md").write_text(
        f"`{result['command']}`\n\n" + "\n".join(table) + "\n"
    )


if __name__ == "__main__":
    main()
