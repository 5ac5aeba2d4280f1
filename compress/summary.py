"""The end-of-run summary: every model along the way, on screen and as Markdown."""

from __future__ import annotations

from rich.table import Table

from compress.manifest import Manifest
from compress.report.rows import model_rows

COLUMNS = ("model", "top1", "params", "size", "batch", "p50 ms", "p99 ms", "img/s")


def summary_rows(manifest: Manifest) -> list[dict[str, str]]:
    """The report's model rows (every model file, each timed runtime), formatted; one line per
    batch size where latency was measured."""
    rows: list[dict[str, str]] = []
    for row in model_rows(manifest):
        runtime = "" if row.runtime is None else f", {row.runtime_name}"
        head = {"model": row.name + runtime, "top1": _pct(row.top1),
                "params": _millions(row.params), "size": _mb(row.bytes)}  # fmt: skip
        if not row.latency:
            rows.append(head)
        for bs, stats in row.latency.items():
            rows.append({**head, "batch": bs, "p50 ms": f"{stats['p50']:.3f}",
                         "p99 ms": f"{stats['p99']:.3f}",
                         "img/s": f"{stats['throughput']:,.0f}"})  # fmt: skip
            head = {}
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


def summary_table(manifest: Manifest) -> Table:
    table = Table(title=f"run {manifest.data.get('pipeline', {}).get('name', '')}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in summary_rows(manifest):
        table.add_row(*[row.get(c, "") for c in COLUMNS])
    return table


def summary_markdown(manifest: Manifest) -> str:
    lines = [f"# Run `{manifest.data.get('pipeline', {}).get('name', '')}`", ""]
    lines += ["| stage | type | status | seconds |", "|---|---|---|---|"]
    for name, entry in manifest.stages.items():
        lines.append(
            f"| {name} | {entry['type']} | {entry['status']} | {entry.get('seconds', '-')} |"
        )
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in summary_rows(manifest):
        lines.append("| " + " | ".join(row.get(c, "") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
