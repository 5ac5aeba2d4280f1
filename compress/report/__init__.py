"""``compress report RUN_DIR``: report.md (figures in report_files/) and a self-contained
report.html of a run: pipeline summary, gates, every model with its ratios to the teacher,
accuracy vs latency, latency distributions and training curves."""

from __future__ import annotations

from pathlib import Path

from compress.errors import CompressError
from compress.io import atomic_path, write_text
from compress.manifest import MANIFEST, Manifest
from compress.report.build import build_report, figure_files
from compress.report.render import FIGURES_DIR, to_html, to_markdown


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write RUN_DIR/report.md and RUN_DIR/report.html; returns their paths."""
    if not (run_dir / MANIFEST).is_file():
        raise CompressError(f"{run_dir} is not a run directory (no {MANIFEST})")
    manifest = Manifest.load(run_dir)
    blocks = build_report(manifest)
    for name, png in figure_files(blocks).items():
        with atomic_path(run_dir / FIGURES_DIR / name) as tmp:
            tmp.write_bytes(png)
    markdown, page = run_dir / "report.md", run_dir / "report.html"
    write_text(markdown, to_markdown(blocks))
    write_text(page, to_html(blocks, blocks[0].text))
    return markdown, page
