"""Static PNG plots for the report (matplotlib, Agg backend: no display needed).

Each function writes one PNG and returns its path, or ``None`` when there is
nothing to plot (an empty histogram is noise, not information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: the report runs headless
import matplotlib.pyplot as plt  # noqa: E402

from mapo.metrics.records import PredictionRecord  # noqa: E402

_DPI = 80  # small files; the page shows them at ~400 px wide


def numeric_series(rows: Sequence[dict[str, Any]]) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """Flatten metric rows into ``{key: (xs, ys)}`` for every numeric key.

    x is the ``step`` key when rows have one, else the row index. Nested mappings
    are flattened with ``/`` (``{"eval": {"acc": 1}}`` -> ``eval/acc``). Booleans and
    non-finite values are skipped.
    """
    x_key = "step" if rows and all(_is_number(r.get("step")) for r in rows) else "row"
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(rows):
        x = float(row["step"]) if x_key == "step" else float(i)
        for key, value in _flatten(row):
            if key == "step" or not _is_number(value) or not math.isfinite(value):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(x)
            ys.append(float(value))
    return x_key, series


def plot_curve(key: str, xs: list[float], ys: list[float], x_label: str, path: Path, title: str | None = None) -> Path:
    """One training curve; a moving average is overlaid when the raw curve is long.

    With ``title`` (words) the chart is titled by it and the logged ``key`` becomes the
    small y label, so the PNG still says which metric it is when seen on its own.
    """
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=_DPI)
    ax.plot(xs, ys, lw=1, alpha=0.6 if len(ys) > 20 else 1.0, marker="" if len(ys) > 20 else ".")
    if len(ys) > 20:
        w = max(2, len(ys) // 20)
        smooth = [sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, lw=1.8, label=f"mean of last {w}")
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title or key, fontsize=9)
    if title:
        ax.set_ylabel(key, fontsize=7)
    ax.set_xlabel(x_label, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_semantic_scores(records: Sequence[PredictionRecord], path: Path) -> Path | None:
    """Histogram of per-turn semantic scores, split by whether the sample was answered correctly."""
    right = [s for r in records if r.correct for s in r.semantic_scores]
    wrong = [s for r in records if not r.correct for s in r.semantic_scores]
    if not right and not wrong:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=_DPI)
    lo, hi = min(right + wrong), max(right + wrong)
    bins = _bins(lo, hi, 20)
    ax.hist([right, wrong], bins=bins, label=["correct", "incorrect"], color=["#2a9d4b", "#c8553d"], stacked=True)
    ax.set_title("semantic score per observation", fontsize=9)
    ax.set_xlabel("score", fontsize=8)
    ax.set_ylabel("observations", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_tool_calls(records: Sequence[PredictionRecord], path: Path) -> Path | None:
    """Histogram of attempted tool calls per sample; the title gives the invalid share of all calls."""
    if not records:
        return None
    calls = [r.tool_calls for r in records]
    total, invalid = sum(calls), sum(r.invalid_calls for r in records)
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=_DPI)
    top = max(calls)
    ax.hist(calls, bins=[b - 0.5 for b in range(top + 2)], color="#3b6ea5", rwidth=0.8)
    share = f"{invalid}/{total} invalid" if total else "no calls"
    ax.set_title(f"tool calls per sample ({share})", fontsize=9)
    ax.set_xlabel("calls in the sample", fontsize=8)
    ax.set_ylabel("samples", fontsize=8)
    ax.set_xticks(range(top + 1))
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_iou(records: Sequence[PredictionRecord], path: Path) -> Path | None:
    """Histogram of crop IoU with the best target box (only samples with targets)."""
    ious = [v for r in records for v in r.iou]
    if not ious:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=_DPI)
    ax.hist(ious, bins=_bins(0.0, 1.0, 20), color="#6a4c93")
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_title("crop IoU with the target box", fontsize=9)
    ax.set_xlabel("IoU (dashed: hit threshold 0.5)", fontsize=8)
    ax.set_ylabel("crops", fontsize=8)
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def _bins(lo: float, hi: float, n: int) -> list[float]:
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _flatten(row: dict[str, Any], prefix: str = ""):
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + "/")
        else:
            yield name, value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
