"""The ``compress`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from compress.errors import CompressError
from compress.ui import console

app = typer.Typer(
    help="Distill, prune, quantize, export and benchmark models from one YAML pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
) -> None:
    """Run a pipeline's stages in order, skipping those whose config and inputs are unchanged."""
    from compress.config.load import load_pipeline
    from compress.io import write_text
    from compress.runner import run_pipeline
    from compress.summary import summary_markdown, summary_table

    config = load_pipeline(pipeline, overrides)
    target = run_dir or Path("runs") / config.name
    console.print(f"[bold]compress run[/] {pipeline} -> {target}/")
    manifest = run_pipeline(config, target, force=force)
    write_text(target / "summary.md", summary_markdown(manifest))
    if config.grid is not None:
        from compress.compare.report import write_compare_report

        for path in write_compare_report(manifest):
            console.print(f"comparison: {path}")
    console.print(summary_table(manifest))
    console.print(f"manifest: {target / 'manifest.json'}   summary: {target / 'summary.md'}")


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


@app.command()
def bench(
    artifact: Annotated[Path, typer.Argument(help="An ONNX file, or a model.pt of ours.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Also measure top-1 on this dataset's test split.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    min_seconds: Annotated[float, typer.Option(help="Timed seconds per batch size.")] = 2.0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write all figures here.")
    ] = None,
) -> None:
    """Latency percentiles, throughput and (with --dataset) accuracy of one artifact."""
    from compress.bench.standalone import bench_artifact, results_table
    from compress.io import write_json

    sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    results = bench_artifact(artifact, sizes, threads, dataset, data_root, min_seconds)
    console.print(results_table(results))
    if json_path:
        write_json(json_path, results)
        console.print(f"wrote {json_path}")


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

    Only the commands: multi-process training (DDP under torchrun) lands with the reliability
    issue; until then every process runs the whole pipeline on its own.
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


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="fashion-mnist, cifar10, cifar100, tiny-imagenet.")],
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
    name: Annotated[str | None, typer.Argument(help="One dataset; default: all four.")] = None,
    root: RootOption = None,
    decode: Annotated[
        bool, typer.Option(help="Decode every image file to find corrupt ones.")
    ] = True,
) -> None:
    """What is present, images per split and class, and files that do not decode (exit 1)."""
    from compress.data.check import check_dataset, class_table, summary_table
    from compress.data.fetch import FETCHERS

    names = [name] if name else FETCHERS.names()
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


def main() -> None:
    try:
        app()
    except CompressError as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        for line in lines:
            console.print(f"[bold red]error:[/] {escape(line)}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
