"""The report's figures as PNG bytes: accuracy vs latency (Pareto), latency CDFs, training curves.

matplotlib runs on the Agg backend (no display needed); each function returns ``None`` when the
run has nothing to draw, so the report says so instead of showing an empty frame.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from compress.report.rows import ModelRow, batch_sizes

PALETTE = plt.get_cmap("tab10").colors
STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 10}  # fmt: skip


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _label(row: ModelRow) -> str:
    return f"{row.stage} · {row.runtime_name}"


def _plain_log_x(ax: Any) -> None:
    """Log x axis with ticks written 0.5, 2, 30 rather than 5x10^-1; in-between ticks (2, 5)
    labelled only when the axis spans less than two decades, where they do not collide."""
    low, high = ax.get_xlim()
    few = np.log10(high / low) < 2

    def minor(v: float, _: Any) -> str:
        return f"{v:g}" if few and f"{v:e}"[0] in "25" else ""

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def pareto_plot(rows: list[ModelRow]) -> bytes | None:
    """top-1 against p50 latency per batch size; the frontier joins the models no other beats on
    both (faster and at least as accurate)."""
    points = [r for r in rows if r.top1 is not None and r.latency]
    sizes = batch_sizes(points)
    if not sizes:
        return None
    colors = {_label(r): PALETTE[i % len(PALETTE)] for i, r in enumerate(points)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
        for ax, bs in zip(axes[0], sizes, strict=True):
            here = [(r.latency[bs]["p50"], 100 * r.top1, r) for r in points if bs in r.latency]
            for x, y, r in here:
                ax.scatter(x, y, s=60, color=colors[_label(r)], label=_label(r), zorder=3)
                ax.annotate(r.stage, (x, y), textcoords="offset points", xytext=(6, 5),
                            fontsize=8)  # fmt: skip
            frontier, best = [], -np.inf
            for x, y, _ in sorted(here, key=lambda p: (p[0], -p[1])):
                if y > best:
                    frontier.append((x, y))
                    best = y
            fx, fy = zip(*frontier, strict=True)
            ax.scatter(fx, fy, s=180, facecolors="none", edgecolors="0.2", lw=1.2, zorder=4,
                       label="Pareto-optimal")  # fmt: skip
            if len(frontier) > 1:
                ax.plot(fx, fy, "--", color="0.5", lw=1, zorder=2)
            ax.set_xscale("log")
            lo, hi = min(x for x, _, _ in here), max(x for x, _, _ in here)
            ax.set_xlim(lo / 1.6, hi * 1.6)
            _plain_log_x(ax)
            ax.set_xlabel(f"p50 latency at batch {bs} (ms, log scale)")
            ax.set_ylabel("test top-1 (%)")
            ax.set_title(f"accuracy vs latency, batch {bs}")
            _pad_y(ax, [y for _, y, _ in here])
        handles, labels = axes[0][-1].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        below = -0.02 - 0.05 * (len(unique) // 4)
        fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(4, len(unique)),
                   bbox_to_anchor=(0.5, below), frameon=False)  # fmt: skip
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return _png(fig)


def _pad_y(ax: Any, values: list[float]) -> None:
    low, high = min(values), max(values)
    margin = max(0.5, (high - low) * 0.3)
    ax.set_ylim(low - margin, high + margin)


def latency_cdf_plot(samples: dict[str, dict[str, np.ndarray]]) -> bytes | None:
    """Empirical CDF of every latency sample, one line per runtime, one panel per batch size;
    dotted guides at p50 and p99."""
    sizes = sorted({bs for per_batch in samples.values() for bs in per_batch}, key=int)
    if not sizes:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 3.8), squeeze=False)
        for ax, bs in zip(axes[0], sizes, strict=True):
            for i, (label, per_batch) in enumerate(samples.items()):
                if bs not in per_batch:
                    continue
                lat = np.sort(per_batch[bs])
                y = np.arange(1, len(lat) + 1) / len(lat)
                ax.step(lat, y, where="post", color=PALETTE[i % len(PALETTE)], lw=1.6,
                        label=f"{label} (n={len(lat):,})")  # fmt: skip
            for q in (0.5, 0.99):
                ax.axhline(q, color="0.4", ls=":", lw=0.8)
                ax.text(1.0, q, f"p{round(q * 100)} ", transform=ax.get_yaxis_transform(),
                        ha="right", va="bottom", fontsize=8, color="0.3")  # fmt: skip
            ax.set_xscale("log")
            _plain_log_x(ax)
            ax.set_ylim(0, 1.01)
            ax.set_xlabel(f"latency at batch {bs} (ms, log scale)")
            ax.set_ylabel("fraction of calls")
            ax.set_title(f"latency distribution, batch {bs}")
            ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.08))
        fig.tight_layout()
        return _png(fig)


def training_plot(histories: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """Loss and accuracy per epoch of every training stage (train top-1, val top-1 if any)."""
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    with plt.rc_context(STYLE):
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10.4, 3.8))
        for i, (stage, history) in enumerate(histories.items()):
            color = PALETTE[i % len(PALETTE)]
            epochs = [h["epoch"] for h in history]
            loss_ax.plot(epochs, [h["loss"] for h in history], "o-", color=color, label=stage)
            acc_ax.plot(epochs, [100 * h["train_top1"] for h in history], "o-", color=color,
                        label=f"{stage} train")  # fmt: skip
            if any("val_top1" in h for h in history):
                val = [100 * h["val_top1"] if "val_top1" in h else np.nan for h in history]
                acc_ax.plot(epochs, val, "s--", color=color, label=f"{stage} val")
        for ax, title in ((loss_ax, "training loss"), (acc_ax, "top-1 (%)")):
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.legend(fontsize=8)
            last = max(h["epoch"] for history in histories.values() for h in history)
            ax.set_xlim(0.5, last + 0.5)
            if last <= 20:
                ax.set_xticks(range(1, last + 1))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        return _png(fig)
