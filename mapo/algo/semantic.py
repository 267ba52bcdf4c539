"""The MAPO semantic score s_{i,k}: one definition for training, evaluation, the report and verl.

Semantic scores (our reading of MAPO, docs/algorithm.md). Observation ``k`` of
trajectory ``i`` is scored ``s_{i,k} = verifier(text, crop_k)`` where ``text`` is
the description opening the next segment (``semantic_target="description"``,
the paper's choice), the tool call's own ``label`` (``"label"``: the stated
intent against what the action returned), or the mean of both (``"both"``). A
missing or empty text, a text longer than ``max_description_chars``, or an
error observation (no crop) scores ``verifier.s_missing`` (the minimum). A tool
call after which the episode ended (no segment followed, so no description
could be written) also scores ``s_missing``: the segment that made the call is
the one credited. Every pair of a batch goes to the verifier in one call.

Evaluation records the same number (:func:`per_observation`), so an eval's
``semantic_score_mean`` is what ``mapo train`` optimises.

``semantic_target="oracle_iou"`` is not MAPO: it needs no verifier and no text,
and scores observation ``k`` by the IoU of the region its tool call showed (original
pixels) with the sample's best-matching target box (:func:`mapo.algo.crop_iou.call_ious`,
the one definition of crop IoU), 0 for an error observation or a region-less tool.
It needs box labels, which MAPO does not, so it bounds what per-turn credit can do
(docs/algorithm.md); a trajectory whose sample has no target box is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

SEMANTIC_TARGETS = ("description", "label", "both", "oracle_iou")
ORACLE_TARGET = "oracle_iou"  # the bound: crop IoU with the target box, no verifier


def needs_verifier(target: str) -> bool:
    """Whether ``target`` is scored by a verifier (every target but ``oracle_iou``)."""
    return target != ORACLE_TARGET


@dataclass(frozen=True)
class SemanticScores:
    """Verifier scores of a batch of ``B`` trajectories with at most ``K`` observations.

    Attributes:
        scores: (B, K) float32, ``scores[i, c]`` is the score of observation ``k = c + 1``,
            NaN where trajectory ``i`` has fewer observations (the advantage estimators' layout).
        description_missing: (B, K) bool, the observation's description is absent or empty.
        description_too_long: (B, K) bool, the description exceeds ``max_description_chars``.
        n_pairs: how many (text, crop) pairs went to the verifier.
    """

    scores: torch.Tensor
    description_missing: torch.Tensor
    description_too_long: torch.Tensor
    n_pairs: int


def _usable_text(text: str | None, max_chars: int) -> str | None:
    """The text to score, or None when it must score ``s_missing`` (absent, empty, too long)."""
    if text is None or not text.strip() or len(text) > max_chars:
        return None
    return text


def semantic_scores(
    trajectories: Sequence[Any],
    verifier: Any,
    *,
    target: str = "description",
    max_description_chars: int = 300,
    batch_size: int = 64,
) -> SemanticScores:
    """Score every observation of ``trajectories`` (``mapo.engine.trajectory.Trajectory``) in one verifier call.

    Args:
        trajectories: B trajectories; observation ``k`` has ``crops[k-1]`` (None for an error
            observation), ``descriptions[k-1]`` and ``tool_calls[k-1].label``.
        verifier: a ``mapo.verifier`` ``Verifier`` (``score(texts, images)``, ``s_missing``); unused
            (may be None) for ``oracle_iou``.
        target: ``description`` | ``label`` | ``both`` (mean of the two scores) | ``oracle_iou``
            (:func:`oracle_iou_scores`).
        max_description_chars: longer texts score ``s_missing`` (guard against verifier hacking).
        batch_size: the verifier's internal batch size.
    Returns:
        :class:`SemanticScores` with (B, K) tensors, ``K = max`` observations (at least 1).
    """
    if target not in SEMANTIC_TARGETS:
        raise ValueError(f"target must be one of {list(SEMANTIC_TARGETS)}, got {target!r}")
    if target == ORACLE_TARGET:
        return oracle_iou_scores(trajectories, max_description_chars=max_description_chars)
    B = len(trajectories)
    K = max([t.num_observations for t in trajectories] + [1])
    s_missing = float(verifier.s_missing)
    fields = ("description",) if target == "description" else ("label",) if target == "label" else ("description", "label")
    parts = torch.full((len(fields), B, K), float("nan"), dtype=torch.float32)  # (F, B, K)
    missing = torch.zeros((B, K), dtype=torch.bool)
    too_long = torch.zeros((B, K), dtype=torch.bool)
    texts, images, where = [], [], []  # one verifier call for the whole batch
    for i, t in enumerate(trajectories):
        for c in range(t.num_observations):
            description = t.descriptions[c]
            missing[i, c] = description is None or not description.strip()
            too_long[i, c] = description is not None and len(description) > max_description_chars
            for f, name in enumerate(fields):
                raw = description if name == "description" else t.tool_calls[c].label
                text = _usable_text(raw, max_description_chars)
                if text is None or t.crops[c] is None:
                    parts[f, i, c] = s_missing
                else:
                    texts.append(text)
                    images.append(t.crops[c])
                    where.append((f, i, c))
    if texts:
        scored = verifier.score(texts, images, batch_size=batch_size).to(torch.float32)  # (N,)
        f_idx, i_idx, c_idx = (torch.tensor(v) for v in zip(*where))
        parts[f_idx, i_idx, c_idx] = scored
    return SemanticScores(parts.mean(dim=0), missing, too_long, len(texts))


def oracle_iou_scores(trajectories: Sequence[Any], *, max_description_chars: int = 300) -> SemanticScores:
    """``s_{i,k}`` = IoU of observation k's region with the sample's target box (the ``oracle_iou`` target).

    Args:
        trajectories: B ``mapo.engine.trajectory.Trajectory`` whose samples have target boxes.
        max_description_chars: only for the ``description_too_long`` flags (the score ignores text).
    Returns:
        :class:`SemanticScores`, (B, K); an observation without a region (error, rotate) scores 0,
        the lowest IoU; ``n_pairs`` = 0 (no verifier call).
    Raises:
        ValueError: a trajectory's sample has no target box (the oracle has nothing to score against).
    """
    from mapo.algo.crop_iou import call_ious  # numpy only

    B = len(trajectories)
    K = max([t.num_observations for t in trajectories] + [1])
    scores = torch.full((B, K), float("nan"), dtype=torch.float32)
    missing = torch.zeros((B, K), dtype=torch.bool)
    too_long = torch.zeros((B, K), dtype=torch.bool)
    for i, t in enumerate(trajectories):
        if not getattr(t.sample, "target_boxes", []):
            raise ValueError(
                f"semantic_target=oracle_iou needs target boxes, but sample {t.sample.id!r} has none "
                "(use data with boxes, e.g. synthetic or V*, or another semantic_target)"
            )
        for c, iou in enumerate(call_ious(t)[: t.num_observations]):
            scores[i, c] = 0.0 if iou is None else float(iou)
            description = t.descriptions[c]
            missing[i, c] = description is None or not description.strip()
            too_long[i, c] = description is not None and len(description) > max_description_chars
    return SemanticScores(scores, missing, too_long, 0)


def semantic_metrics(sem: SemanticScores) -> dict[str, float]:
    """``semantic_mean/std`` over present observations, ``description_missing_rate``, ``description_too_long_rate``.

    Without any observation only the two rates are returned (as 0).
    """
    present = ~torch.isnan(sem.scores)
    n = int(present.sum())
    out = {
        "description_missing_rate": float(sem.description_missing[present].float().mean()) if n else 0.0,
        "description_too_long_rate": float(sem.description_too_long[present].float().mean()) if n else 0.0,
        "verifier_pairs": float(sem.n_pairs),
    }
    if n:
        values = sem.scores[present].double()
        out["semantic_mean"] = float(values.mean())
        out["semantic_std"] = float(values.std(unbiased=False))
    return out


def per_observation(sem: SemanticScores, trajectories: Sequence[Any]) -> list[list[float]]:
    """``sem.scores`` as ragged lists: one float per observation of each trajectory (the records' layout)."""
    return [[float(v) for v in sem.scores[i, : t.num_observations].tolist()] for i, t in enumerate(trajectories)]
