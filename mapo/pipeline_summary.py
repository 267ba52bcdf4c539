"""The pipeline's summary: the before/after table of held-out metrics, its verdict and the RL trend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# Metrics of the before/after table: (key in eval metrics.json["tools"], label, what it means).
SUMMARY_METRICS = (
    ("accuracy", "accuracy", "answer correct (greedy, held-out)"),
    ("crop_hit_rate", "tool precision", "valid crops with IoU >= 0.5 against a target box"),
    ("first_crop_hit_rate", "first-zoom hit rate", "samples whose first valid crop hits a target"),
    ("crop_iou_mean", "crop IoU", "mean IoU of valid crops with the nearest target box"),
    ("semantic_score_mean", "semantic score", "mean verifier cosine of description vs crop (s_missing = -1)"),
    ("tool_calls_per_sample", "tool calls / sample", "executed tool calls per sample"),
    ("invalid_call_rate", "invalid call rate", "rejected or unparsable calls / calls"),
    ("no_answer_rate", "no-answer rate", "samples that never gave an <answer>"),
)


def before_after(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per :data:`SUMMARY_METRICS` key: before, after, delta (None where undefined)."""
    rows = []
    for key, label, meaning in SUMMARY_METRICS:
        b, a = before["tools"].get(key), after["tools"].get(key)
        delta = a - b if a is not None and b is not None else None
        rows.append({"key": key, "label": label, "meaning": meaning, "before": b, "after": a, "delta": delta})
    return rows


def verdict(rows: list[dict[str, Any]], n: int) -> str:
    """An honest one-line reading of the accuracy change: beyond noise or not (two binomial standard errors)."""
    acc = next(r for r in rows if r["key"] == "accuracy")
    b, a = acc["before"], acc["after"]
    if a is None or b is None:
        return "accuracy undefined (no held-out samples)"
    # Standard error of a difference of two proportions on n samples each (not paired; conservative enough).
    se = math.sqrt(max(b * (1 - b) + a * (1 - a), 1e-12) / n)
    if a - b > 2 * se:
        return f"RL improved held-out accuracy by {a - b:+.3f} (more than 2 standard errors, {2 * se:.3f}, on n={n})"
    if b - a > 2 * se:
        return f"RL made held-out accuracy worse by {a - b:+.3f} (more than 2 standard errors, {2 * se:.3f}, on n={n})"
    return (f"no accuracy change beyond noise: {a - b:+.3f} is within 2 standard errors ({2 * se:.3f}) on n={n}; "
            "a longer RL budget or a larger held-out set is needed to tell")


def training_trend(metrics_path: Path, key: str = "reward_mean", window: int = 5) -> dict[str, float] | None:
    """Mean of ``key`` over the first and the last ``window`` logged training steps (None if never logged)."""
    from mapo.train.common import read_metrics

    values = [r[key] for r in read_metrics(metrics_path) if key in r] if metrics_path.is_file() else []
    if not values:
        return None
    w = min(window, len(values))
    return {"key": key, "window": w, "first": float(sum(values[:w]) / w), "last": float(sum(values[-w:]) / w)}


def _trend_text(trend: dict[str, float] | None) -> str:
    if trend is None:
        return "no training reward logged"
    return (f"training {trend['key']} (sampled rollouts), mean of the first {trend['window']} steps "
            f"{trend['first']:.3f} -> last {trend['window']} steps {trend['last']:.3f}")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if isinstance(value, float) and value < 0 else f"{value:.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the before/after table, the verdict, stage times and where everything is."""
    lines = [
        "# mapo demo summary", "",
        f"Written by `{summary['command']}`. Held-out set: {summary['n_heldout']} synthetic samples "
        f"(`{summary['paths']['heldout']}`), greedy decoding, the same budgets before and after RL.", "",
        "| metric | before RL (warm start) | after RL | change | meaning |", "|---|---|---|---|---|",
    ]
    for r in summary["table"]:
        delta = "n/a" if r["delta"] is None else f"{r['delta']:+.3f}"
        lines.append(f"| {r['label']} | {_fmt(r['before'])} | {_fmt(r['after'])} | {delta} | {r['meaning']} |")
    lines += ["", f"**Verdict:** {summary['verdict']}", "", f"RL ({summary['algorithm']}, {summary['rl_steps']} steps): "
              f"{_trend_text(summary['rl_trend'])}.", "", "| stage | seconds | how |", "|---|---|---|"]
    for stage, info in summary["stages"].items():
        lines.append(f"| {stage} | {info['seconds']:.1f} | {info['how']} |")
    lines += ["", "| what | where |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in summary["paths"].items()]
    return "\n".join(lines) + "\n"


def print_summary(summary: dict[str, Any]) -> None:
    """The before/after table with rich, then the verdict and the run directory."""
    from rich.table import Table

    from mapo.progress import console as mapo_console

    table = Table(title=f"held-out ({summary['n_heldout']} samples): warm start vs after {summary['rl_steps']} RL steps")
    for col in ("metric", "before RL", "after RL", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in summary["table"]:
        table.add_row(r["label"], _fmt(r["before"]), _fmt(r["after"]), "n/a" if r["delta"] is None else f"{r['delta']:+.3f}")
    console = mapo_console()  # full width in a log file: no wrapping at 80 columns
    console.print(table)
    console.print(f"[bold]verdict:[/bold] {summary['verdict']}")
    console.print(f"RL: {_trend_text(summary['rl_trend'])}")
    times = ", ".join(f"{k} {v['seconds']:.0f}s{'' if v['how'] == 'ran' else ' (' + v['how'] + ')'}"
                      for k, v in summary["stages"].items())
    console.print(f"stage times: {times}; total {summary['wall_s']:.0f}s")
    console.print(f"run directory: [bold]{summary['paths']['run_dir']}[/bold] (summary.md, report/index.html)")
