"""Tables and plots of a comparison grid: which method, and how much it buys over the baseline.

Top-1 is the held-out test split's, of the checkpoint each cell kept without looking at it
(``select: last`` or ``best_val``). Mean and sample standard deviation are over seeds. A grid
with ``datasets`` gets every table and plot once per dataset, in ``compare/<dataset>/``.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from compress.config.base import DataConfig
from compress.config.grid import TEACHER_SWEEP, GridConfig, dataset_blocks, label_scope
from compress.data.module import get_data
from compress.io import atomic_path, write_json, write_text
from compress.manifest import Manifest
from compress.models import load_model
from compress.train.evaluate import predict


def cell_results(
    manifest: Manifest, dataset: str | None = None
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The grid config and, per cell label, one record per seed (top1, params, method); with
    ``dataset``, the cells of that ``grid.datasets`` label only."""
    config = manifest.data["pipeline"]["config"]
    grid = config["grid"]
    prefix = _scope(dataset) + grid["template"] + "-"
    cells: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, entry in manifest.stages.items():
        if not name.startswith(prefix) or entry.get("status") != "done":
            continue
        label, _, seed = name[len(prefix) :].rpartition("-s")
        metrics = entry["metrics"]
        cells[label].append({"seed": int(seed), "top1": metrics["top1"],
                             "val_top1": metrics.get("val_top1"),
                             "params": metrics.get("params"),
                             "method": config["stages"][name]["method"],
                             "teacher": config["stages"][name].get("input")})  # fmt: skip
    return grid, cells


def _summary(records: list[dict[str, Any]], key: str = "top1") -> tuple[float, float, int]:
    """Mean and sample std of top-1 over seeds: fractions, like every top1 of the manifest."""
    values = [r[key] for r in records]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def dataset_labels(manifest: Manifest) -> list[str | None]:
    """The grid's dataset labels (or ``grid.labels`` scopes) in order, or [None] for a grid on
    the pipeline's one dataset."""
    config = manifest.data["pipeline"]["config"]
    grid = GridConfig.model_validate(config["grid"])
    if grid.labels:
        return [label_scope(count) for count in grid.labels]
    return [label for label, _ in dataset_blocks(grid, config["data"])] or [None]


def _scope(dataset: str | None) -> str:
    return f"{dataset}." if dataset else ""


def _teacher_stage(manifest: Manifest, dataset: str | None) -> tuple[str, dict[str, Any]] | None:
    """The scope's teacher; ``grid.labels`` scopes share the one unscoped teacher."""
    teachers = [(n, e) for n, e in manifest.stages.items() if e["type"] == "teacher"]
    scoped = [(n, e) for n, e in teachers if n.startswith(_scope(dataset))]
    return next(iter(scoped or [(n, e) for n, e in teachers if "." not in n]), None)


def welch_interval(
    a: list[float], b: list[float], level: float = 0.95
) -> tuple[float, float] | None:
    """Interval for mean(a) - mean(b) by Welch's t (unequal variances); None when a side has
    fewer than 2 values or both have no spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return None
    from scipy.stats import t as student_t

    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(student_t.ppf(0.5 + level / 2, df)) * math.sqrt(va + vb)
    diff = statistics.fmean(a) - statistics.fmean(b)
    return diff - half, diff + half


def methods_table(manifest: Manifest, dataset: str | None = None) -> list[dict[str, Any]]:
    """Ranked rows: method, mean, std, seeds, gain vs baseline (points), params."""
    _, cells = cell_results(manifest, dataset)
    method_labels = [label for label in cells if not _is_sweep(label)]
    baseline = _summary(cells["baseline"])[0] if "baseline" in cells else None
    base_values = [r["top1"] for r in cells.get("baseline", [])]
    rows = []
    for label in method_labels:
        mean, std, n = _summary(cells[label])
        gain = None if baseline is None else mean - baseline
        ci = None
        if label != "baseline":
            ci = welch_interval([r["top1"] for r in cells[label]], base_values)
        rows.append({"method": label, "top1_mean": mean, "top1_std": std, "seeds": n,
                     "gain_vs_baseline": gain, "gain_ci95": ci,
                     "params": cells[label][0]["params"]})  # fmt: skip
        if all(r.get("val_top1") is not None for r in cells[label]):
            # data.val_split: the split to choose settings on, never the test set
            val_mean, val_std, _ = _summary(cells[label], "val_top1")
            rows[-1].update(val_top1_mean=val_mean, val_top1_std=val_std)
    rows.sort(key=lambda r: -r["top1_mean"])
    _, teacher = _teacher_stage(manifest, dataset) or (None, None)
    if teacher and teacher.get("status") == "done":
        top1 = teacher["metrics"]["top1"]
        gain = None if baseline is None else top1 - baseline
        params = teacher["metrics"].get("params")
        rows.insert(0, {"method": "teacher", "top1_mean": top1, "top1_std": 0.0, "seeds": 1,
                        "gain_vs_baseline": gain, "gain_ci95": None,
                        "params": params})  # fmt: skip
    return rows


def sweep_table(manifest: Manifest, key: str, dataset: str | None = None) -> list[dict[str, Any]]:
    """Accuracy per value of ``key`` (temperature or alpha) over the sweep_method cells whose
    other settings equal the sweep's (so a kd cell at the base T counts in the alpha sweep)."""
    _, cells = cell_results(manifest, dataset)
    prefix = {"temperature": "T", "alpha": "a"}[key]
    sweep = [records for label, records in cells.items() if _is_sweep(label) and label[0] == prefix]
    if not sweep:
        return []
    reference = {k: v for k, v in sweep[0][0]["method"].items() if k != key}
    by_value: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for label, records in cells.items():
        method = records[0]["method"]
        if label.startswith(TEACHER_SWEEP):  # same method, another teacher
            continue
        if {k: v for k, v in method.items() if k != key} == reference:
            by_value[float(method[key])].extend(records)
    rows = []
    for value in sorted(by_value):
        mean, std, n = _summary(by_value[value])
        rows.append({key: value, "top1_mean": mean, "top1_std": std, "seeds": n})
    return rows


def teacher_table(manifest: Manifest, dataset: str | None = None) -> list[dict[str, Any]]:
    """Student accuracy per teacher of the teacher-size sweep, smallest teacher first, with its
    gain over the baseline cells (the student trained alone). The pipeline's own teacher needs no
    sweep entry: a method cell with the sweep's method block distilling from it is its row."""
    _, cells = cell_results(manifest, dataset)
    config = manifest.data["pipeline"]["config"]["stages"]
    baseline = _summary(cells["baseline"])[0] if "baseline" in cells else None
    base_teacher = (_teacher_stage(manifest, dataset) or (None, None))[0]
    sweep = {label[len(TEACHER_SWEEP) :]: records for label, records in cells.items()
             if label.startswith(TEACHER_SWEEP)}  # fmt: skip

    def teacher_of(records: list[dict[str, Any]]) -> str | None:
        return records[0]["teacher"] or base_teacher  # no input: the pipeline's teacher

    if sweep and base_teacher not in {teacher_of(records) for records in sweep.values()}:
        block = next(iter(sweep.values()))[0]["method"]
        for label, records in cells.items():
            own = teacher_of(records) == base_teacher
            if own and not _is_sweep(label) and records[0]["method"] == block:
                sweep[config[base_teacher]["model"]["arch"]] = records
                break
    rows = []
    for label, records in sweep.items():
        teacher_name = teacher_of(records)
        teacher = manifest.stages.get(teacher_name, {})
        metrics = teacher.get("metrics", {})
        mean, std, n = _summary(records)
        rows.append({"teacher": label,
                     "arch": config[teacher_name]["model"]["arch"],
                     "teacher_params": metrics.get("params"), "teacher_top1": metrics.get("top1"),
                     "teacher_epochs": metrics.get("epochs"),
                     "teacher_train_loss": metrics.get("train_loss"),
                     "top1_mean": mean, "top1_std": std, "seeds": n,
                     "gain_vs_baseline": None if baseline is None else mean - baseline,
                     })  # fmt: skip
    rows.sort(key=lambda r: r["teacher_params"] or 0)
    return rows


def _is_sweep(label: str) -> bool:
    if label.startswith(TEACHER_SWEEP):
        return True
    return (label[:1] in ("T", "a")) and _is_number(label[1:])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def teacher_entropy(
    manifest: Manifest, temperatures: list[float], dataset: str | None = None
) -> dict[float, float]:
    """Mean entropy (nats) of the teacher's softened test-set predictions at each temperature."""
    name, teacher = _teacher_stage(manifest, dataset)  # type: ignore[misc]
    model, _, _ = load_model(manifest.run_dir / teacher["artifacts"]["model"]["path"])
    config = manifest.data["pipeline"]["config"]
    data_block = config["stages"].get(name, {}).get("data") or config["data"]
    data = get_data(DataConfig.model_validate(data_block), config["seed"])
    logits = predict(model, data, data.test, torch.device("cpu"))
    out = {}
    for t in temperatures:
        p = torch.softmax(logits / t, dim=1)
        out[t] = float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
    return out


def _markdown(rows: list[dict[str, Any]], title: str) -> str:
    if not rows:
        return f"## {title}\n\n(no cells)\n"
    keys = _columns(rows)
    lines = [f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "gain_ci95":  # fractions, shown in points
        return f"[{100 * value[0]:+.2f}, {100 * value[1]:+.2f}]"
    if key in ("top1_mean", "teacher_top1", "val_top1_mean"):  # fractions, as percentages
        return f"{100 * value:.2f}%"
    if key == "val_top1_std":
        return f"±{100 * value:.2f}"
    if key in ("top1_std", "gain_vs_baseline"):  # in points
        return f"{100 * value:+.2f}" if key == "gain_vs_baseline" else f"±{100 * value:.2f}"
    if key in ("params", "teacher_params"):
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:g}" if key in ("temperature", "alpha") else f"{value:.3f}"
    return str(value)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every row's keys in first-seen order (the teacher row has no validation columns)."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def write_compare_report(manifest: Manifest) -> list[Path]:
    """methods/temperature/alpha tables (Markdown + CSV) and PNG plots under RUN/compare/, or
    under RUN/compare/<dataset>/ for each of ``grid.datasets``."""
    written = []
    for dataset in dataset_labels(manifest):
        written += _write_dataset_report(manifest, dataset)
    grid = manifest.data["pipeline"]["config"]["grid"]
    if grid.get("labels"):
        written += _write_labels_report(manifest, grid["labels"])
    write_json(manifest.run_dir / "compare" / "cells.json", cells_record(manifest))
    return [*written, manifest.run_dir / "compare" / "cells.json"]


def cells_record(manifest: Manifest) -> dict[str, Any]:
    """Every finished stage's top-1 (and val_top1, train_loss where recorded), teacher, seconds
    and the host (CPU, ISA, threads) it ran on, with the command and versions: the raw numbers
    behind the tables, to publish with them."""
    stages = {}
    for name, entry in manifest.stages.items():
        if entry.get("status") != "done":
            continue
        metrics = entry.get("metrics", {})
        record = {"type": entry["type"], "top1": metrics.get("top1")}
        record.update({k: metrics[k] for k in ("val_top1", "train_loss") if k in metrics})
        teacher = entry.get("inputs", {}).get("teacher", {}).get("stage")
        if teacher:
            record["teacher"] = teacher
        for key in ("seconds", "cpu_seconds", "host", "finished_at"):
            if key in entry:
                record[key] = entry[key]
        stages[name] = record
    pipeline = manifest.data["pipeline"]
    return {"pipeline": pipeline.get("name"), "command": pipeline.get("command"),
            "versions": manifest.data.get("versions"), "stages": stages}  # fmt: skip


def labels_table(manifest: Manifest, counts: list[int | str]) -> list[dict[str, Any]]:
    """One row per (labels per class, method): the methods table of every ``grid.labels`` scope."""

    rows = []
    for count in counts:
        for row in methods_table(manifest, label_scope(count)):
            if row["method"] != "teacher":
                rows.append({"labels_per_class": count, **row})
    return rows


def _write_labels_report(manifest: Manifest, counts: list[int | str]) -> list[Path]:
    """compare/labels.md/.csv and labels.png: top-1 against labelled images per class, one line
    per method, with the teacher and the all-labels baseline as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = manifest.run_dir / "compare"
    rows = labels_table(manifest, counts)
    title = "Test top-1 per labelled images per class (mean ± std over seeds)"
    written = []
    for suffix, text in ((".md", _markdown(rows, title)), (".csv", _csv(rows))):
        write_text(out_dir / f"labels{suffix}", text)
        written.append(out_dir / f"labels{suffix}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = [r for r in rows if r["labels_per_class"] != "all"]
    for method in dict.fromkeys(r["method"] for r in curve):
        points = sorted((r["labels_per_class"], r) for r in curve if r["method"] == method)
        ax.errorbar([x for x, _ in points], _pct([r for _, r in points], "top1_mean"),
                    yerr=_pct([r for _, r in points], "top1_std"), marker="o", capsize=3,
                    label=method)  # fmt: skip
    _, teacher = _teacher_stage(manifest, None) or (None, None)
    if teacher and teacher.get("status") == "done":
        ax.axhline(100 * teacher["metrics"]["top1"], color="#444", ls="--", label="teacher")
    full = [r for r in rows if r["labels_per_class"] == "all" and r["method"] == "baseline"]
    if full:
        ax.axhline(100 * full[0]["top1_mean"], color="#888", ls=":", label="baseline, all labels")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Distillation with few labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "labels.png"))
    return written


def _write_dataset_report(manifest: Manifest, dataset: str | None) -> list[Path]:
    out_dir = manifest.run_dir / "compare" / (dataset or "")
    grid, _ = cell_results(manifest, dataset)
    methods = methods_table(manifest, dataset)
    temperature = sweep_table(manifest, "temperature", dataset) if grid["temperatures"] else []
    if temperature:
        entropy = teacher_entropy(manifest, [r["temperature"] for r in temperature], dataset)
        for row in temperature:
            row["teacher_entropy_nats"] = entropy[row["temperature"]]
    alpha = sweep_table(manifest, "alpha", dataset) if grid["alphas"] else []
    teachers = teacher_table(manifest, dataset)
    written = []
    on = f" on {dataset}" if dataset else ""
    for stem, rows, title in (("methods", methods, f"Methods{on} (test top-1 over seeds)"),
                              ("temperature", temperature, f"KD temperature{on}"),
                              ("alpha", alpha, f"KD alpha{on}"),
                              ("teachers", teachers, f"Teacher size{on}")):  # fmt: skip
        if not rows:
            continue
        for suffix, text in ((".md", _markdown(rows, title)), (".csv", _csv(rows))):
            write_text(out_dir / f"{stem}{suffix}", text)
            written.append(out_dir / f"{stem}{suffix}")
    written += _plots(out_dir, methods, temperature, alpha, teachers)
    return written


def _plots(out_dir: Path, methods, temperature, alpha, teachers) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if methods:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [r["method"] for r in methods]
        colors = ["#888" if n == "teacher" else "#3b75af" for n in names]
        means, stds = _pct(methods, "top1_mean"), _pct(methods, "top1_std")
        tuned = [r for r in methods if r.get("val_top1_mean") is not None]
        width = 0.4 if tuned else 0.8  # validation bars beside the test bars: choose on those
        xs = range(len(names))
        ax.bar([x - width / 2 * bool(tuned) for x in xs], means, width, yerr=stds, capsize=4,
               color=colors)  # fmt: skip
        if tuned:
            from matplotlib.patches import Patch

            at = [names.index(r["method"]) + width / 2 for r in tuned]
            val_means, val_stds = _pct(tuned, "val_top1_mean"), _pct(tuned, "val_top1_std")
            ax.bar(at, val_means, width, yerr=val_stds, capsize=4, color="#9cc3e4", hatch="//")
            ax.legend(handles=[Patch(color="#3b75af", label="test split (report)"),
                               Patch(facecolor="#9cc3e4", hatch="//",
                                     label="validation split (choose on this)")],
                      loc="upper right")  # fmt: skip
            means, stds = means + val_means, stds + val_stds
        ax.set_xticks(list(xs), names)
        low = min(m - s for m, s in zip(means, stds, strict=True))
        ax.set_ylim(max(0.0, low - 2), min(100.0, max(means) + 1.5))
        ax.set_ylabel("top-1 (%), mean ± std over seeds")
        ax.set_title("Distillation methods")
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "methods.png"))
    for rows, key, label in ((temperature, "temperature", "KD temperature T"),
                             (alpha, "alpha", "KD alpha (weight of hard labels)")):  # fmt: skip
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r[key] for r in rows]
        ax.errorbar(xs, _pct(rows, "top1_mean"), yerr=_pct(rows, "top1_std"),
                    marker="o", capsize=4, label="student top-1")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 (%)")
        if key == "temperature":
            ax.set_xscale("log", base=2)
            if rows[0].get("teacher_entropy_nats") is not None:
                twin = ax.twinx()
                twin.plot(xs, [r["teacher_entropy_nats"] for r in rows], "s--", color="#c44")
                twin.set_ylabel("teacher soft-label entropy (nats)", color="#c44")
        ax.set_title(f"Accuracy vs {key}")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{key}.png"))
    if teachers:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [f"{r['teacher']}\n{(r['teacher_params'] or 0) / 1e6:.1f}M" for r in teachers]
        ax.errorbar(names, _pct(teachers, "top1_mean"),
                    yerr=_pct(teachers, "top1_std"), marker="o", capsize=4,
                    label="student top-1 (mean ± std)")  # fmt: skip
        done = [(n, r) for n, r in zip(names, teachers, strict=True) if r["teacher_top1"]]
        ax.plot([n for n, _ in done], [100 * r["teacher_top1"] for _, r in done], "s--",
                color="#888", label="teacher top-1")  # fmt: skip
        ax.set_xlabel("teacher (parameters)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title("Student accuracy vs teacher size")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "teachers.png"))
    return paths


def _pct(rows: list[dict[str, Any]], key: str) -> list[float]:
    """A fraction column of the rows in percent, as the plots show it."""
    return [100 * r[key] for r in rows]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
