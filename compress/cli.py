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
