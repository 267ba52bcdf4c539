"""The report's section of saved training rollouts (``RUN_DIR/rollouts/``, :mod:`mapo.train.rollout_log`).

One collapsible block per (step, prompt), in step order: the group's question and rewards, then
one card per member with each turn's crop, label, description, ``s_{i,k}`` (the score the
estimator received, whatever ``semantic_target`` was) and the mean advantage over that turn's
tokens. Comparing the blocks of a GRPO run and a MAPO run shows which zooms MAPO's per-turn
term credited: under GRPO every turn of a trajectory carries the same advantage. Every
model-written string goes through :func:`mapo.report.html.esc`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapo.metrics.records import PredictionRecord, read_jsonl
from mapo.report import html as H

ROLLOUTS_DIR = "rollouts"  # mapo.train.rollout_log.ROLLOUTS_DIR (not imported: the report needs no torch)


def load_rollouts(run: Path, notes: list[str]) -> tuple[list[PredictionRecord], Path] | None:
    """The saved training rollouts of run directory ``run`` in (step, prompt, member) order, and their folder."""
    folder = run / ROLLOUTS_DIR
    if not (folder / "predictions.jsonl").is_file():
        return None
    try:
        result = read_jsonl(folder / "predictions.jsonl")
    except ValueError as e:
        notes.append(f"training rollouts not shown: {str(e)[:200]}")
        return None
    if result.truncated_line is not None:
        notes.append(f"rollouts/predictions.jsonl line {result.truncated_line} was cut off (interrupted run?)")
    records = [r for r in result.records if isinstance(r.meta.get("train"), dict)]
    records.sort(key=lambda r: (_int(r.meta["train"].get("step")), _int(r.meta["train"].get("group")),
                                _int(r.meta["train"].get("member"))))
    return records, folder


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def render_rollouts(
    records: list[PredictionRecord], images: Callable[[int, PredictionRecord], H.CardImages], low_score: float = 0.2
) -> str:
    """``<section id="rollouts">``: one block per (step, prompt); ``images(k, record)`` makes card k's pictures."""
    if not records:
        return ""
    train0 = records[0].meta["train"]
    out = [
        '<section id="rollouts"><h2>Training rollouts</h2>',
        f"<p>{len(records)} sampled trajectories saved by <code>mapo train</code> "
        f"(estimator <b>{H.esc(train0.get('estimator'))}</b>, semantic target <b>{H.esc(train0.get('semantic_target'))}"
        "</b>), grouped by step and prompt. <i>score</i> is the s<sub>i,k</sub> the advantage estimator received for "
        "the turn's crop; <i>advantage</i> is the mean advantage over the turn's own tokens (the text that made the "
        "call). Under GRPO every turn of a trajectory carries the same advantage; MAPO's per-turn term makes them "
        "differ.</p>",
    ]
    groups: dict[tuple[int, int], list[tuple[int, PredictionRecord]]] = {}
    for k, rec in enumerate(records):
        t = rec.meta["train"]
        groups.setdefault((_int(t.get("step")), _int(t.get("group"))), []).append((k, rec))
    for n, ((step, _), members) in enumerate(groups.items()):
        first = members[0][1]
        rewards = ", ".join(_num(r.meta["train"].get("reward")) for _, r in members)
        summary = (f"step {step} · prompt {H.esc(first.meta['train'].get('prompt'))} · rewards [{H.esc(rewards)}]")
        out.append(f'<details class="group"{" open" if n == 0 else ""}><summary>{summary}</summary>')
        out += [H.render_card(rec, images(k, rec), low_score, kind="rollout") for k, rec in members]
        out.append("</details>")
    out.append("</section>")
    return "\n".join(out)


__all__ = ["load_rollouts", "render_rollouts"]
