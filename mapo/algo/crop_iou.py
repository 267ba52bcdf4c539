"""Crop IoU and zoom hits: one definition for training, held-out evaluation, records and the report.

- **Crop IoU** (:func:`crop_ious`): for each tool call that showed a region
  (``ExecutedCall.region``: a valid call of a tool that selects one; errors and
  region-less tools such as rotate have none), the IoU of that original-pixel box
  with the best-matching target box of the sample.
- **First-zoom hit** (:func:`first_zoom_hit`): the first such crop has IoU
  ``>= hit_iou`` (0.5); a trajectory without one misses.
- **Found** (:func:`found`): some crop of the episode hits; **recovered**
  (:func:`recovered`): the first crop missed and a later one hit.
- :func:`zoom_summary` reduces per-sample IoU lists to the mean crop IoU, the crop
  hit rate, the first-zoom hit rate and the found / recovered rates.

Numpy only: the ``oracle_iou`` semantic target, records and the report read these
definitions without torch. Formulas: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapo.agent.tools import box_iou

HIT_IOU = 0.5  # a crop hits a target when IoU >= this


# ----------------------------------------------------------------------------- zoom metrics


def crop_ious(trajectory: Any, *, untargeted_iou: float | None = None) -> list[float]:
    """IoU of each region a trajectory's tool calls showed with the best-matching target box, in call order.

    Args:
        trajectory: a ``mapo.engine.trajectory.Trajectory`` (reads ``sample.target_boxes`` and ``tool_calls``).
        untargeted_iou: without target boxes, ``[]`` when None (the default), else this value per region.
    Returns:
        one float per call whose ``region`` is not None (original pixels).
    """
    return [v for v in call_ious(trajectory, untargeted_iou=untargeted_iou) if v is not None]


def call_ious(trajectory: Any, *, untargeted_iou: float | None = None) -> list[float | None]:
    """:func:`crop_ious` with one entry per tool call (observation), None where the call showed no region.

    Without target boxes and with ``untargeted_iou`` None, every entry is None. The
    ``oracle_iou`` semantic target (:mod:`mapo.algo.semantic`) reads this layout.
    """
    targets = [b.xyxy for b in getattr(trajectory.sample, "target_boxes", [])]
    if not targets and untargeted_iou is None:
        return [None] * len(trajectory.tool_calls)
    return [
        None if c.region is None else max((box_iou(c.region, b) for b in targets), default=untargeted_iou)
        for c in trajectory.tool_calls
    ]


def first_zoom_hit(ious: Sequence[float], hit_iou: float = HIT_IOU) -> bool:
    """The first crop (``ious[0]``, from :func:`crop_ious`) has IoU ``>= hit_iou``; no crop is a miss."""
    return bool(ious) and ious[0] >= hit_iou


def found(ious: Sequence[float], hit_iou: float = HIT_IOU) -> bool:
    """Some crop of the episode (:func:`crop_ious`) has IoU ``>= hit_iou``: its zooms found the target."""
    return any(v >= hit_iou for v in ious)


def recovered(ious: Sequence[float], hit_iou: float = HIT_IOU) -> bool:
    """The first crop missed and a later one hit: the episode recovered from a miss."""
    return bool(ious) and ious[0] < hit_iou and found(ious[1:], hit_iou)


@dataclass(frozen=True)
class ZoomSummary:
    """Crop IoU and hit rates over a set of samples; None where the denominator is empty."""

    iou_mean: float | None  # mean over every crop of every sample (np.mean, float64)
    crop_hit_rate: float | None  # share of those crops with IoU >= hit_iou
    first_zoom_hit_rate: float | None  # share of samples whose first crop hits
    ious: tuple[float, ...]  # every crop's IoU, sample by sample in call order
    samples: int  # samples counted
    found_rate: float | None = None  # share of samples some crop of which hits (:func:`found`)
    recovered_rate: float | None = None  # share of samples whose first crop missed and a later one hit
    recovered_after_miss_rate: float | None = None  # recovered / samples with a crop whose first crop missed


def zoom_summary(per_sample: Sequence[Sequence[float]], hit_iou: float = HIT_IOU) -> ZoomSummary:
    """Reduce per-sample crop IoU lists (one list per counted sample, :func:`crop_ious`) to a :class:`ZoomSummary`.

    ``iou_mean`` is ``np.mean`` over the concatenated lists (float64); rates count exactly.
    """
    flat = [v for row in per_sample for v in row]
    n = len(per_sample)
    missed_first = sum(bool(row) and row[0] < hit_iou for row in per_sample)
    n_recovered = sum(recovered(row, hit_iou) for row in per_sample)
    return ZoomSummary(
        iou_mean=float(np.mean(flat)) if flat else None,
        crop_hit_rate=sum(v >= hit_iou for v in flat) / len(flat) if flat else None,
        first_zoom_hit_rate=float(np.mean([first_zoom_hit(row, hit_iou) for row in per_sample])) if per_sample else None,
        ious=tuple(flat),
        samples=n,
        found_rate=sum(found(row, hit_iou) for row in per_sample) / n if n else None,
        recovered_rate=n_recovered / n if n else None,
        recovered_after_miss_rate=n_recovered / missed_first if missed_first else None,
    )
