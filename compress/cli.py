"""The ``compress`` command line."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from typer.core import TyperCommand

from compress.bench.timing import TimingPlan
from compress.errors import CompressError, Terminated
from compress.registry import BACKENDS
from compress.ui import console

if TYPE_CHECKING:
    from compress.config.pipeline import PipelineSettings
    from compress.manifest import Manifest

app = typer.Typer(
    help="Distill, prune, quantize, export and benchmark models from one YAML pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fetchable() -> list[str]:
    from compress.data.fetch import fetchable

    return fetchable()


# placeholders in parameter help, and the registry names that replace them
HELP_NAMES: dict[str, Callable[[], str]] = {
    "{backends}": lambda: " | ".join(BACKENDS.names()),
    "{fetchable}": lambda: ", ".join(_fetchable()),
}


class NamesInHelp(TyperCommand):
    """Fills HELP_NAMES' placeholders in its parameters' help only when the help is printed:
    listing a registry imports its entries (onnx, torchvision), which every start of the
    command line would otherwise pay, ``compress --help`` included."""

    def format_help(self, ctx: typer.Context, formatter: object) -> None:  # type: ignore[override]
        for param in self.params:
            for key, names in HELP_NAMES.items():
                text = getattr(param, "help", None)
                if text and key in text:
                    param.help = text.replace(key, names())  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)  # type: ignore[arg-type]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override any key, e.g. --set distill.epochs=1 (repeatable)."),
]


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    overrides: SetOption = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory. Default: runs/<pipeline name>/.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-run every stage, even unchanged ones.")] = False,
    rerun: Annotated[
        list[str] | None,
        typer.Option(help="Re-run this stage (repeatable); its consumers follow if it changed."),
    ] = None,
) -> None:
    """Run a pipeline's stages in order, skipping those whose config and inputs are unchanged."""
    from compress import distributed
    from compress.config.load import load_pipeline
    from compress.runner import run_pipeline

    console.quiet = not distributed.is_main()  # under torchrun, one console: rank 0's
    config = load_pipeline(pipeline, overrides)
    target = run_dir or Path("runs") / config.name
    console.print(f"[bold]compress run[/] {pipeline} -> {target}/")
    try:
        command = shlex.join(["compress", *sys.argv[1:]])
        manifest = run_pipeline(config, target, force=force, rerun=rerun, command=command)
    except KeyboardInterrupt as exc:  # typer would exit 130 silently
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        console.print(f"[yellow]{stopped}[/]: run the same command again to resume")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    finally:
        distributed.shutdown()
    if distributed.is_main():  # under torchrun rank 0 alone reports
        _report_run(config, target, manifest)


def _report_run(config: PipelineSettings, target: Path, manifest: Manifest) -> None:
    """Gates, summary.md, comparison and HTML report of a finished run; exit 3 on a failed gate."""
    from compress.gates import EXIT_GATE_FAILED, evaluate_gates, gates_table
    from compress.io import write_text
    from compress.report import write_report
    from compress.summary import summary_markdown, summary_table

    gates = evaluate_gates(config.gates, manifest)
    manifest.data["gates"] = gates
    manifest.save()
    write_text(target / "summary.md", summary_markdown(manifest))
    if config.grid is not None:
        from compress.compare.report import write_compare_report

        for path in write_compare_report(manifest):
            console.print(f"comparison: {path}")
    _, page = write_report(target)
    console.print(summary_table(manifest))
    console.print(f"manifest: {target / 'manifest.json'}   summary: {target / 'summary.md'}")
    console.print(f"report: {page}")
    if gates:
        console.print(gates_table(gates))
    failed = [g for g in gates if not g["passed"]]
    for gate in failed:
        console.print(f"[bold red]gate failed:[/] {gate['gate']}: {escape(gate['detail'])}")
    if failed:
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
def validate(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    overrides: SetOption = None,
) -> None:
    """Check a pipeline without running anything and print the resolved config with defaults."""
    from compress.config.load import load_pipeline

    config = load_pipeline(pipeline, overrides)
    console.print(config.to_yaml(), markup=False, end="")
    stages = ", ".join(f"{n} ({c.type})" for n, c in config.stage_items())
    console.print(f"[green]✓ {pipeline} is valid[/]: {stages}")


@app.command(cls=NamesInHelp)
def bench(
    artifact: Annotated[
        Path | None, typer.Argument(help="An ONNX file (ours or anyone's), or a model.pt of ours.")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="{backends}. Default: by file type."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="cpu | cuda. Default: cpu, or cuda for the GPU-only backends."),
    ] = None,
    dtype: Annotated[str, typer.Option(help="fp32 | fp16 | bf16 (torch backends).")] = "fp32",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    warmup_iterations: Annotated[
        int, typer.Option(help="Warm-up calls, at least.")
    ] = TimingPlan.warmup_iterations,
    warmup_seconds: Annotated[
        float, typer.Option(help="Warm-up seconds, at least.")
    ] = TimingPlan.warmup_seconds,
    min_iterations: Annotated[
        int, typer.Option(help="Timed calls per batch size.")
    ] = TimingPlan.min_iterations,
    min_seconds: Annotated[
        float, typer.Option(help="Timed seconds per batch size.")
    ] = TimingPlan.min_seconds,
    max_seconds: Annotated[
        float, typer.Option(help="Stop a batch size after this long even if short of minimums.")
    ] = TimingPlan.max_seconds,
    dataset: Annotated[
        str | None, typer.Option(help="Also measure accuracy on this dataset's test split.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only N test images for accuracy.", min=1)
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="Another artifact: report top-1 agreement with it.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write all figures here.")
    ] = None,
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(help="Two artifacts or two --json files: print B's figures against A's."),
    ] = None,
) -> None:
    """Latency percentiles, throughput, model size and MACs, and (with --dataset) accuracy."""
    from compress.bench.backends import BackendOptions
    from compress.bench.standalone import (
        BenchRequest,
        bench_artifact,
        compare_table,
        load_or_bench,
        results_table,
    )
    from compress.io import write_json

    if backend is not None and backend not in BACKENDS:
        raise CompressError(BACKENDS.unknown_message(backend))
    if device not in (None, "cpu", "cuda") or dtype not in ("fp32", "fp16", "bf16"):
        raise CompressError("--device is cpu or cuda; --dtype is fp32, fp16 or bf16")
    request = BenchRequest(
        batch_sizes=_batch_sizes(batch_sizes),
        backend=backend,
        options=BackendOptions(threads, device, dtype),  # type: ignore[arg-type]
        plan=TimingPlan(
            warmup_iterations, warmup_seconds, min_iterations, min_seconds, max_seconds
        ),
        dataset=dataset,
        data_root=data_root,
        limit=limit,
        teacher=teacher,
    )
    if (artifact is None) == (compare is None):
        raise CompressError("give one ARTIFACT to bench, or --compare A B")
    if compare is not None:
        first, second = (load_or_bench(path, request) for path in compare)
        console.print(compare_table(first, second))
        if json_path:
            write_json(json_path, {"a": first, "b": second})
            console.print(f"wrote {json_path}")
        return
    assert artifact is not None
    results = bench_artifact(artifact, request)
    console.print(results_table(results))
    if json_path:
        write_json(json_path, results)
        console.print(f"wrote {json_path}")


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="An FP32 ONNX classifier (anyone's).")],
    out: Annotated[Path, typer.Option(help="Where to write the INT8 ONNX file.")],
    dataset: Annotated[
        str | None, typer.Option(help="Calibrate on its train split, measure on its test split.")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Or a folder: train/ + test/ class trees, a class tree, or flat images."),
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    calibration_images: Annotated[
        int, typer.Option(min=1, help="Training images drawn at random to set activation ranges.")
    ] = 1024,
    per_channel: Annotated[
        bool, typer.Option(help="One weight scale per output channel (else per tensor).")
    ] = True,
    reduce_range: Annotated[
        str, typer.Option(help="7-bit weights: auto (on for x86 without VNNI) | on | off.")
    ] = "auto",
    mean: Annotated[
        str | None, typer.Option(help="Per-channel mean, e.g. 0.485,0.456,0.406.")
    ] = None,
    std: Annotated[
        str | None, typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(min=8, help="Input size, when the graph's is dynamic.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Measure accuracy on only N test images.")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes timed.")] = "1,32",
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved timing rounds.")] = 10,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write all figures here.")
    ] = None,
) -> None:
    """Static INT8 of an ONNX classifier (onnxruntime, QDQ, uint8 activations, int8 per-channel
    weights), then its accuracy and speed against the FP32 file, side by side."""
    from compress.io import write_json
    from compress.ortquant.measure import results_notes, results_table
    from compress.ortquant.quantize import QuantizeRequest, quantize_and_measure

    if reduce_range not in ("auto", "on", "off"):
        raise CompressError(f"--reduce-range is auto, on or off, not '{reduce_range}'")
    request = QuantizeRequest(
        source=model, out=out, dataset=dataset, images=images, data_root=data_root,
        calibration_images=calibration_images, per_channel=per_channel,
        reduce_range=reduce_range,  # type: ignore[arg-type]
        mean=_floats("--mean", mean), std=_floats("--std", std), image_size=image_size,
        limit=limit, batch_sizes=_batch_sizes(batch_sizes), threads=threads, rounds=rounds,
        overwrite=overwrite,
    )  # fmt: skip
    results = quantize_and_measure(request)
    console.print(results_table(results))
    for line in results_notes(results):
        console.print(f"  {escape(line)}", soft_wrap=True)
    if json_path:
        write_json(json_path, results)
        console.print(f"wrote {json_path}")


def _floats(option: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CompressError(f"{option} expects numbers like 0.5,0.5,0.5, got '{text}'") from None


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise CompressError(f"--batch-sizes expects numbers like 1,32, got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise CompressError(f"--batch-sizes expects positive numbers, got '{text}'")
    return sizes


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds manifest.json).")],
) -> None:
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html (figures embedded)."""
    from compress.report import write_report

    markdown, page = write_report(run_dir)
    console.print(f"wrote {markdown} and {page}")


@app.command()
def methods() -> None:
    """List the registered distillation methods."""
    from compress.distill import METHODS, load_methods

    load_methods()
    for name, spec in METHODS.items():
        params = [f for f in spec.params.model_fields if f != "name"]
        console.print(
            f"[bold]{name:<10}[/] {spec.summary}  [dim]{spec.paper}; {', '.join(params)}[/]"
        )


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="A model spec (torchvision:NAME...) or a model.pt.")],
    image_size: Annotated[int, typer.Option(min=8, help="Square input size.")] = 32,
    channels: Annotated[int, typer.Option(min=1, help="Input channels.")] = 3,
    num_classes: Annotated[int, typer.Option(min=2, help="Classes of the adapted head.")] = 10,
    stem: Annotated[str, typer.Option(help="auto | imagenet | cifar | compact.")] = "auto",
) -> None:
    """Each module path with its output shape and MACs: the layer names distillation methods
    (teacher_layers, student_layers) and prune.ignored_layers take."""
    import torch
    from rich.table import Table

    from compress.models.layers import list_layers

    net, arch = _layers_model(model, image_size, channels, num_classes, stem)
    if arch != model:
        channels = next(p for p in net.parameters() if p.dim() == 4).shape[1]
    rows = list_layers(net, torch.zeros(1, channels, image_size, image_size))
    table = Table(title=f"{arch} at {channels}x{image_size}x{image_size}")
    for column in ("module", "type", "output", "MMACs"):
        table.add_column(column, justify="right" if column == "MMACs" else "left")
    for row in rows:
        shape = "x".join(map(str, row.shape)) if row.shape else "-"
        table.add_row(escape(row.path), row.kind, shape, f"{row.macs / 1e6:.2f}")
    console.print(table)
    total = sum(r.macs for r in rows if "." not in r.path)
    console.print(f"{len(rows)} modules, {total / 1e6:.1f} MMACs per image")


def _layers_model(model: str, image_size: int, channels: int, num_classes: int, stem: str):
    from pydantic import ValidationError

    from compress.config.base import ModelConfig
    from compress.models import ModelSpec, build_model, load_model
    from compress.models.registry import resolve_stem

    if model.endswith(".pt") and Path(model).is_file():
        net, spec, _ = load_model(Path(model))
        return net, spec.arch
    try:
        cfg = ModelConfig(arch=model, stem=stem)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise CompressError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    spec = ModelSpec(cfg.arch, num_classes, channels, stem=resolve_stem(cfg.stem, image_size))
    return build_model(spec), cfg.arch


@app.command("config-reference")
def config_reference(
    readme: Annotated[
        Path | None,
        typer.Option(help="Rewrite the generated block of this file (between its markers)."),
    ] = None,
) -> None:
    """Print the pipeline file reference (every key, type, default, meaning) as Markdown."""
    from compress.config.reference import reference_markdown, replace_block
    from compress.io import write_text

    text = reference_markdown()
    if readme is None:
        sys.stdout.write(text)
        return
    write_text(readme, replace_block(readme.read_text(encoding="utf-8"), text))
    console.print(f"updated the config reference in {readme}")


@app.command()
def launch(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    nodes: Annotated[int, typer.Option(min=1, help="Machines.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(min=1, help="Processes (GPUs) per machine.")] = 1,
    slurm: Annotated[
        bool, typer.Option(help="An sbatch script instead of torchrun lines.")
    ] = False,
    host: Annotated[
        str | None, typer.Option(help="First node's address (several nodes, without --slurm).")
    ] = None,
    port: Annotated[int, typer.Option(help="Rendezvous port on the first node.")] = 29500,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    time: Annotated[str | None, typer.Option(help="Slurm time limit, e.g. 04:00:00.")] = None,
    write: Annotated[
        Path | None, typer.Option(help="Write the script here instead of printing it.")
    ] = None,
    overrides: SetOption = None,
    run_dir: Annotated[Path | None, typer.Option(help="Passed on to compress run.")] = None,
) -> None:
    """Print (or --write) the torchrun command or sbatch script that runs PIPELINE on N x G GPUs.

    Training stages then run with DistributedDataParallel, one process per GPU; batch_size is
    per process.
    """
    from compress.config.load import load_pipeline
    from compress.io import write_text
    from compress.launch import Launch, sbatch_script, shell_script

    config = load_pipeline(pipeline, overrides)
    plan = Launch(
        pipeline, config.name, nodes, gpus_per_node, host, port, list(overrides or []),
        run_dir, partition, time,
    )  # fmt: skip
    script = sbatch_script(plan) if slurm else shell_script(plan)
    if write is None:
        sys.stdout.write(script)
        return
    write_text(write, script)
    write.chmod(0o755)
    how = f"sbatch {write}" if slurm else f"bash {write}" + ("" if nodes == 1 else " on each node")
    console.print(f"wrote {write}; run it with: {how}", soft_wrap=True)


data_app = typer.Typer(
    help="Get datasets (fetch) and see what is there (check).", no_args_is_help=True
)
app.add_typer(data_app, name="data")

RootOption = Annotated[
    Path | None,
    typer.Option(help="Data folder. Default: $COMPRESS_DATA or ./data (and the usual places)."),
]


@data_app.command("fetch", cls=NamesInHelp)
def data_fetch(
    name: Annotated[str, typer.Argument(help="{fetchable}.")],
    root: RootOption = None,
    archive: Annotated[
        str | None,
        typer.Option(help="tiny-imagenet: a downloaded tiny-imagenet-200.zip, or a mirror URL."),
    ] = None,
) -> None:
    """Download a dataset into the data folder; offline, say what to download and where."""
    from compress.data.fetch import fetch

    folder, fetched = fetch(name, root, archive)
    state = "fetched into" if fetched else "already present in"
    console.print(f"[green]✓[/] {name} {state} {folder}")


@data_app.command("check")
def data_check(
    name: Annotated[
        str | None, typer.Argument(help="One dataset; default: all that data fetch gets.")
    ] = None,
    root: RootOption = None,
    decode: Annotated[
        bool, typer.Option(help="Decode every image file to find corrupt ones.")
    ] = True,
) -> None:
    """What is present, images per split and class, and files that do not decode (exit 1)."""
    from compress.data.check import check_dataset, class_table, summary_table

    names = [name] if name else _fetchable()
    checks = [check_dataset(n, root, decode) for n in names]
    console.print(summary_table(checks))
    for check in checks:
        if name and check.problem is None:
            console.print(class_table(check))
        if name and check.problem is not None:
            console.print(f"[red]{name}[/]: {escape(check.problem)}")
        for message in check.corrupt[:20]:
            console.print(f"[red]corrupt[/] {escape(message)}")
        if len(check.corrupt) > 20:
            console.print(f"[red]... and {len(check.corrupt) - 20} more corrupt files[/]")
    if any(c.corrupt for c in checks) or (name and checks[0].problem is not None):
        raise typer.Exit(1)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except CompressError as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        rank = int(os.environ.get("RANK", "0"))
        console.quiet = False  # a process other than rank 0 still reports its own error
        for line in lines:
            console.print(f"[bold red]error:[/]{f' [rank {rank}]' if rank else ''} {escape(line)}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
