"""Sampled training rollouts saved by ``mapo train``, so a reader sees which zooms the advantage credited.

Every ``save_rollouts_every`` steps (and at step 1) the first ``save_rollouts_groups`` groups of
the step's batch (rank 0's) are written to ``RUN_DIR/rollouts/`` in ``mapo eval``'s record format
(:func:`mapo.eval.record.prediction_record`: ``predictions.jsonl``, ``images/``, ``crops/``), one
record per trajectory, with what the update used:

- ``turns[j].semantic_score``: ``s_{i,k}`` of observation ``k = j + 1`` as the estimator received it
  (whatever ``semantic_target`` is; None without semantic scores);
- ``turns[j].advantage``: the mean advantage ``A_{i,t}`` over the tokens of assistant segment ``j``
  (the turn's own text, which made call ``j + 1``), from the very tensor the loss reads;
- ``meta["train"]``: ``step`` (as in metrics.jsonl), ``prompt`` (the sample id), ``group``,
  ``member``, ``reward`` (``R_i``), ``acc``, ``estimator``, ``semantic_target``.

Under data parallelism rank 0 alone writes, from the groups it played: the first groups of the step
(``mapo.train.distributed.rank_span``), so a run saves what one process would whenever
``save_rollouts_groups`` is at most ``prompts_per_step / W``, and fewer groups otherwise.

Record ids are ``s<step>/<sample id>/m<member>``, so the members of a group (one sample id) keep
their own crop files; they share member 0's copy of the input image (long side 512 px). A resumed run that saves a step again replaces that step's records.
``mapo report RUN`` shows them grouped by step and prompt (:mod:`mapo.report.rollouts`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROLLOUTS_DIR = "rollouts"  # RUN_DIR/rollouts/predictions.jsonl (+ images/, crops/)


def due(step: int, every: int) -> bool:
    """Whether logged step ``step`` (1-based) saves rollouts: step 1 and every ``every``-th (never when 0)."""
    return every > 0 and (step == 1 or step % every == 0)


def turn_advantages(advantages: torch.Tensor, segment_ids: torch.Tensor, n_turns: int) -> list[float | None]:
    """Mean advantage over each assistant segment's tokens of one trajectory; None for a segment with no token.

    Args:
        advantages: (T,) float, the trajectory's row of the step's advantages.
        segment_ids: (T,) int, ``j`` on segment ``j``'s tokens, -1 outside the loss.
        n_turns: assistant turns of the trajectory.
    """
    out: list[float | None] = []
    for j in range(n_turns):
        mask = segment_ids == j
        out.append(float(advantages[mask].double().mean()) if bool(mask.any()) else None)
    return out


def save_rollouts(
    run_dir: Path,
    step: int,
    trajectories: Sequence[Any],
    rewards: Sequence[Any],
    scores: torch.Tensor | None,
    advantages: torch.Tensor,
    segment_ids: torch.Tensor,
    group: torch.Tensor,
    *,
    n_groups: int,
    estimator: str,
    semantic_target: str,
) -> int:
    """Write the first ``n_groups`` groups of a step's batch; returns the number of records written.

    Shapes: ``B`` trajectories grouped by prompt; ``scores`` (B, K) or None; ``advantages`` and
    ``segment_ids`` (B, T); ``group`` (B,) prompt ids local to this rank.
    """
    from mapo.eval.config import EvalConfig
    from mapo.eval.record import prediction_record
    from mapo.eval.samples import _benchmark_of
    from mapo.metrics.records import append_jsonl, read_jsonl

    out = Path(run_dir) / ROLLOUTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.jsonl"
    if path.is_file():  # a resumed run saving this step again: keep one copy
        kept = [r for r in read_jsonl(path).records if (r.meta.get("train") or {}).get("step") != step]
        path.write_text("".join(r.to_json() + "\n" for r in kept), encoding="utf-8")
    chosen = list(dict.fromkeys(int(g) for g in group.tolist()))[:n_groups]
    benchmark = _benchmark_of([t.sample for t in trajectories])
    config = EvalConfig(image_max_side=512)
    member: dict[int, int] = {}
    first_image: dict[int, str | None] = {}
    written = 0
    for i, t in enumerate(trajectories):
        g = int(group[i])
        if g not in chosen:
            continue
        m = member[g] = member.get(g, -1) + 1
        row = [] if scores is None else scores[i, : t.num_observations].tolist()
        s = [None if (v is None or math.isnan(v)) else float(v) for v in row] + [None] * (t.num_observations - len(row))
        named = dataclasses.replace(t, sample=dataclasses.replace(t.sample, id=f"s{step}/{t.sample.id}/m{m}"))
        record = prediction_record(named, s, out, benchmark, config)
        if m == 0:
            first_image[g] = record.image
        elif record.image is not None and first_image.get(g):  # the group's members share one input image
            (out / record.image).unlink(missing_ok=True)
            record.image = first_image[g]
        for turn, adv in zip(record.turns, turn_advantages(advantages[i], segment_ids[i], len(record.turns))):
            turn.advantage = adv
        record.meta["train"] = {
            "step": step, "prompt": t.sample.id, "group": g, "member": m, "reward": float(rewards[i].total),
            "acc": float(rewards[i].acc), "estimator": estimator, "semantic_target": semantic_target,
        }
        append_jsonl(path, record)
        written += 1
    return written


__all__ = ["ROLLOUTS_DIR", "due", "save_rollouts", "turn_advantages"]
