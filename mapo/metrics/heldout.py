"""What a set of trajectories scored, and the held-out evaluator that plays them.

Crop IoU, first-zoom hit, found and recovered have one definition, in
:mod:`mapo.algo.crop_iou`; this module builds the metric sets from them:

- :func:`trajectory_metrics` is the standard metric set of ``B`` trajectories
  (reward, accuracy, tool use, IoU, hit, :func:`search_metrics`).
- :func:`evaluate` is the held-out evaluator: greedy rollouts (``G = 1``) of
  samples with a policy, then those metrics. The RL recipe's periodic ``eval/*``
  and the SFT recipe's ``heldout/*`` rows both come from it; ``mapo eval`` keeps
  its own loop (it writes records) and reduces them with
  :func:`mapo.algo.crop_iou.zoom_summary`.

Samples without a target box: by default they leave every IoU and hit rate (RL's
``iou_mean``/``hit_rate``, eval's ``crop_*``). SFT's held-out rows count them in,
each crop at IoU 0 and the trajectory a miss (``untargeted_iou=0.0``); its
synthetic samples always have targets, so the two agree there. Formulas:
``docs/metrics.md``.

Only numpy at import: records read these definitions without torch;
:func:`evaluate` imports the rollout when called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapo.algo.crop_iou import HIT_IOU, crop_ious, zoom_summary


def zoom_metrics(
    trajectories: Sequence[Any], *, hit_iou: float = HIT_IOU, untargeted_iou: float | None = None
) -> dict[str, float]:
    """``iou_mean`` (0 without crops) and ``hit_rate`` (first-zoom hit) of B trajectories.

    Over the trajectories whose sample has a target box, ``{}`` when none has; with
    ``untargeted_iou`` set, over all of them (:func:`crop_ious`).
    """
    counted = [t for t in trajectories if untargeted_iou is not None or getattr(t.sample, "target_boxes", [])]
    if not counted:
        return {}
    summary = zoom_summary([crop_ious(t, untargeted_iou=untargeted_iou) for t in counted], hit_iou)
    return {"iou_mean": summary.iou_mean if summary.iou_mean is not None else 0.0, "hit_rate": summary.first_zoom_hit_rate}


def search_metrics(
    trajectories: Sequence[Any], *, hit_iou: float = HIT_IOU, untargeted_iou: float | None = None
) -> dict[str, float]:
    """How B trajectories searched: ``crop_hit_rate``, ``found_rate``, ``recovered_rate``, ``recovered_after_miss_rate``.

    Counted like :func:`zoom_metrics` (``{}`` when no sample has a target box); a rate whose
    denominator is empty (no crop; no first crop that missed) is 0. Formulas: docs/metrics.md.
    """
    counted = [t for t in trajectories if untargeted_iou is not None or getattr(t.sample, "target_boxes", [])]
    if not counted:
        return {}
    z = zoom_summary([crop_ious(t, untargeted_iou=untargeted_iou) for t in counted], hit_iou)
    return {
        "crop_hit_rate": z.crop_hit_rate or 0.0,
        "found_rate": z.found_rate or 0.0,
        "recovered_rate": z.recovered_rate or 0.0,
        "recovered_after_miss_rate": z.recovered_after_miss_rate or 0.0,
    }


# ----------------------------------------------------------------------------- the standard metric set


def trajectory_metrics(
    trajectories: Sequence[Any], rewards: Sequence[Any], *, untargeted_iou: float | None = None
) -> dict[str, float]:
    """Reward, accuracy, tool-use and zoom metrics of B trajectories (formulas: docs/metrics.md).

    Args:
        trajectories: B ``mapo.engine.trajectory.Trajectory``.
        rewards: B ``mapo.algo.reward.RewardBreakdown`` (``total``, ``acc``, ``fmt``), same order.
        untargeted_iou: how samples without a target box count in ``iou_mean``/``hit_rate`` (:func:`zoom_metrics`).
    Returns:
        floats; a rate whose denominator is empty is 0; ``iou_mean``/``hit_rate`` and the
        :func:`search_metrics` only when some sample has a target box (synthetic, V*) or
        ``untargeted_iou`` is set.
    """
    if len(trajectories) != len(rewards) or not trajectories:
        raise ValueError(
            f"need one reward per trajectory and at least one of each, got {len(trajectories)} and {len(rewards)}"
        )
    total = np.array([r.total for r in rewards], dtype=np.float64)
    calls = [t.num_observations for t in trajectories]
    invalid = sum(not c.valid for t in trajectories for c in t.tool_calls)
    out = {
        "reward_mean": float(total.mean()),
        "reward_std": float(total.std()),
        "accuracy": float(np.mean([r.acc for r in rewards])),
        "format_error_rate": float(np.mean([any(turn.errors for turn in t.turns) for t in trajectories])),
        "tool_call_rate": float(np.mean([n > 0 for n in calls])),
        "tool_calls_mean": float(np.mean(calls)),
        "invalid_call_rate": invalid / sum(calls) if sum(calls) else 0.0,
        "turns_mean": float(np.mean([len(t.turns) for t in trajectories])),
        "answer_rate": float(np.mean([t.finish_reason == "answer" for t in trajectories])),
        "response_tokens_mean": float(np.mean([t.num_generated for t in trajectories])),
    }
    return out | zoom_metrics(trajectories, untargeted_iou=untargeted_iou) | search_metrics(
        trajectories, untargeted_iou=untargeted_iou
    )


def call_metrics(trajectories: Sequence[Any]) -> dict[str, float]:
    """Counts of held-out rows beyond :func:`trajectory_metrics` (B >= 1 trajectories).

    ``valid_call_rate`` = valid calls / executed calls (0 without calls); ``tool_use_rate``
    = share of trajectories with a valid call; ``format_error_turns`` = assistant turns
    with a protocol error (a count); ``letter_accuracy`` = share whose ``<answer>`` reads
    as the right option letter (``mapo.data.scoring.extract_choice``), without the
    reward's length guard and whitespace strip (``accuracy`` has them); ``n`` = B.
    """
    from mapo.data.scoring import extract_choice

    calls = sum(t.num_observations for t in trajectories)
    valid = sum(c.valid for t in trajectories for c in t.tool_calls)
    letters = [
        extract_choice(t.answer_text, t.sample.options) if t.answer_text is not None else None for t in trajectories
    ]
    return {
        "valid_call_rate": valid / calls if calls else 0.0,
        "tool_use_rate": sum(t.used_tool for t in trajectories) / len(trajectories),
        "format_error_turns": float(sum(len(turn.errors) > 0 for t in trajectories for turn in t.turns)),
        "letter_accuracy": float(np.mean([letter == t.sample.answer for letter, t in zip(letters, trajectories)])),
        "n": float(len(trajectories)),
    }


# ----------------------------------------------------------------------------- the held-out evaluator


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the played trajectories and their metrics."""

    trajectories: list  # B mapo.engine.trajectory.Trajectory, in sample order (G = 1)
    metrics: dict[str, float]  # trajectory_metrics | call_metrics | semantic_metrics (with a verifier)


def greedy_config(rollout_cfg: Any, n_samples: int) -> Any:
    """``rollout_cfg`` for evaluation: one greedy trajectory per sample, batches of at most ``n_samples``."""
    batch = max(1, min(rollout_cfg.batch_size, n_samples))
    return dataclasses.replace(rollout_cfg, group_size=1, greedy=True, batch_size=batch)


def evaluate(
    samples: Sequence[Any],
    policy: Any,
    rollout_cfg: Any,
    *,
    reward: Any = None,
    verifier: Any = None,
    semantic_target: str = "description",
    verifier_batch_size: int = 64,
    untargeted_iou: float | None = None,
) -> Evaluation:
    """Greedy rollouts (``G = 1``) of ``samples`` with ``policy``, then the standard metrics.

    Args:
        samples: B ``mapo.data.Sample`` (at least one).
        rollout_cfg: a ``mapo.engine.rollout.RolloutConfig``; :func:`greedy_config` makes it greedy with G = 1.
        reward: the ``mapo.algo.reward.RewardConfig`` of ``reward_mean``/``accuracy`` (default config when None).
        verifier: scores the descriptions (``semantic_mean``, ...) when given; ``semantic_target=oracle_iou``
            reports the mean crop IoU as ``semantic_mean`` without one.
        untargeted_iou: how samples without a target box count in the zoom metrics (:func:`zoom_metrics`).
    """
    # Imported here: the zoom metrics above stay importable without torch.
    from mapo.algo import semantic
    from mapo.algo.reward import RewardConfig, outcome_reward
    from mapo.engine.rollout import rollout

    if not samples:
        raise ValueError("evaluate needs at least one sample")
    rc = greedy_config(rollout_cfg, len(samples))
    trajectories = rollout(list(samples), policy, rc)
    reward_cfg = reward if reward is not None else RewardConfig()
    rewards = [outcome_reward(t, reward_cfg) for t in trajectories]
    metrics = trajectory_metrics(trajectories, rewards, untargeted_iou=untargeted_iou) | call_metrics(trajectories)
    if verifier is not None or not semantic.needs_verifier(semantic_target):  # oracle_iou needs no verifier
        sem = semantic.semantic_scores(
            trajectories, verifier, target=semantic_target,
            max_description_chars=rc.protocol.max_description_chars, batch_size=verifier_batch_size,
        )
        metrics.update(semantic.semantic_metrics(sem))
    return Evaluation(trajectories, metrics)


__all__ = [
    "Evaluation",
    "call_metrics",
    "evaluate",
    "greedy_config",
    "search_metrics",
    "trajectory_metrics",
    "zoom_metrics",
]
