"""Two evaluations of one set side by side: the before/after table and an honest verdict on accuracy.

The demo's ``summary.md`` (:mod:`mapo.pipelines.demo_summary`) and the report's
comparison table (:mod:`mapo.report`) both read these, so the table and its
noise estimate have one definition.
"""

from __future__ import annotations

import math
from typing import Any

# Metrics of the before/after table: (key in eval metrics.json["tools"], label, what it means).
SUMMARY_METRICS = (
    ("accuracy", "accuracy", "answer correct (greedy, held-out)"),
    ("crop_hit_rate", "tool precision", "valid crops with IoU >= 0.5 against a target box"),
    ("first_crop_hit_rate", "first-zoom hit rate", "samples whose first valid crop hits a target"),
    ("found_rate", "found rate", "samples some valid crop of which hits a target"),
    ("recovered_rate", "recovered rate", "samples whose first valid crop missed and a later one hit"),
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
    """An honest one-line reading of the accuracy change: beyond noise or not (two binomial standard errors).

    ``rows`` are one evaluation set's :func:`before_after`; the caller says which set (``summary.md``).
    """
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
