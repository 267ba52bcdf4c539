"""The pipeline's summary: the before/after tables (test set, validation set), the verdict and the RL trend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEST_EVAL = "eval_test"  # RUN/eval_test: a trained policy on the test set (the demo's rl/, every compare run)
TEST_BEFORE = "eval_before_test"  # OUT/eval_before_test: the demo's warm start on the test set


def training_trend(metrics_path: Path, key: str = "reward_mean", window: int = 5) -> dict[str, float] | None:
    """Mean of ``key`` over the first and the last ``window`` logged training steps (None if never logged)."""
    from mapo.train.metrics_log import read_metrics

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


def set_title(summary: dict[str, Any], which: str) -> str:
    """``test set (400 samples, seed 2000003)`` / ``validation set (...)`` from the summary's ``sets``."""
    info = (summary.get("sets") or {}).get(which) or {}
    if which == "validation" and not info:  # a summary written before the sets were recorded
        info = {"n": summary.get("n_heldout")}
    seed = f", seed {info['seed']}" if info.get("seed") is not None else ""
    return f"{which} set ({info.get('n')} samples{seed})"


def _table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| metric | before RL (warm start) | after RL | change | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        delta = "n/a" if r["delta"] is None else f"{r['delta']:+.3f}"
        lines.append(f"| {r['label']} | {_fmt(r['before'])} | {_fmt(r['after'])} | {delta} | {r['meaning']} |")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the test-set table and verdict, the validation table, stage times and where everything is."""
    on_test = summary.get("verdict_set") == "test"
    lines = [
        "# mapo demo summary", "",
        f"Written by `{summary['command']}`. Greedy decoding, the same budgets before and after RL. "
        + ("The verdict is read on the test set, measured once at the end; nothing was chosen on it. The "
           "validation set (the RL run's periodic evaluation, where settings are chosen) is shown below it."
           if on_test else "No test set was configured (`test.n: 0`): every figure is on the validation set, "
           "where settings are chosen, so it may flatter the result."), "",
        f"## {set_title(summary, 'test' if on_test else 'validation').capitalize()}: "
        f"`{summary['paths']['test' if on_test else 'heldout']}`", "",
    ]
    lines += _table_lines(summary["table"])
    lines += ["", f"**Verdict ({set_title(summary, summary.get('verdict_set', 'validation'))}):** {summary['verdict']}"]
    if on_test:
        lines += ["", f"## {set_title(summary, 'validation').capitalize()}: `{summary['paths']['heldout']}`", ""]
        lines += _table_lines(summary["table_validation"])
    if summary.get("search"):
        from mapo.pipelines.search_check import search_markdown

        lines += ["", *search_markdown(summary["search"])]
    lines += ["", f"RL ({summary['algorithm']}, {summary['rl_steps']} steps): "
              f"{_trend_text(summary['rl_trend'])}.", "", "| stage | seconds | how |", "|---|---|---|"]
    for stage, info in summary["stages"].items():
        lines.append(f"| {stage} | {info['seconds']:.1f} | {info['how']} |")
    lines += ["", "| what | where |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in summary["paths"].items()]
    return "\n".join(lines) + "\n"


def print_summary(summary: dict[str, Any]) -> None:
    """The before/after table with rich, then the verdict and the run directory."""
    from rich.table import Table

    from mapo.core.progress import console as mapo_console

    which = summary.get("verdict_set", "validation")
    table = Table(title=f"{set_title(summary, which)}: warm start vs after {summary['rl_steps']} RL steps")
    for col in ("metric", "before RL", "after RL", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in summary["table"]:
        table.add_row(r["label"], _fmt(r["before"]), _fmt(r["after"]), "n/a" if r["delta"] is None else f"{r['delta']:+.3f}")
    console = mapo_console()  # full width in a log file: no wrapping at 80 columns
    console.print(table)
    console.print(f"[bold]verdict ({set_title(summary, which)}):[/bold] {summary['verdict']}")
    if which == "test":
        acc = next((r for r in summary["table_validation"] if r["key"] == "accuracy"), None)
        if acc is not None:
            console.print(f"{set_title(summary, 'validation')}: accuracy {_fmt(acc['before'])} -> {_fmt(acc['after'])}")
    console.print(f"RL: {_trend_text(summary['rl_trend'])}")
    if summary.get("search"):
        from mapo.pipelines.search_check import SEARCH_COLUMNS

        info = summary["search"]["set"]
        search = Table(title=f"where to look: {info['level']} test set ({info['n']} samples, seed {info['seed']})")
        for col in ("policy", *SEARCH_COLUMNS.values()):
            search.add_column(col, justify="left" if col == "policy" else "right")
        for row in summary["search"]["rows"]:
            search.add_row(row["policy"], *("n/a" if row[k] is None else f"{row[k]:.3f}" for k in SEARCH_COLUMNS))
        console.print(search)
    times = ", ".join(f"{k} {v['seconds']:.0f}s{'' if v['how'] == 'ran' else ' (' + v['how'] + ')'}"
                      for k, v in summary["stages"].items())
    console.print(f"stage times: {times}; total {summary['wall_s']:.0f}s")
    console.print(f"run directory: [bold]{summary['paths']['run_dir']}[/bold] (summary.md, report/index.html)")
