"""The RL run's periodic held-out evaluation: greedy rollouts (G = 1) reduced to ``eval/*`` metrics."""

from __future__ import annotations

import dataclasses

from mapo import semantic
from mapo.reward import outcome_reward
from mapo.rollout import rollout
from mapo.train import diagnostics
from mapo.train.rl_run import Run


def evaluate(run: Run) -> dict[str, float]:
    """Greedy rollouts (G = 1) on the held-out set: accuracy, hit rate, IoU, semantic mean, ... as ``eval/*``."""
    samples = run.data.heldout
    if not samples:
        return {}
    rc = dataclasses.replace(
        run.rollout_cfg, group_size=1, greedy=True, batch_size=max(1, min(run.rollout_cfg.batch_size, len(samples)))
    )
    trajectories = rollout(samples, run.policy, rc)
    metrics = diagnostics.trajectory_metrics(trajectories, [outcome_reward(t, run.cfg.reward) for t in trajectories])
    if run.verifier is not None:
        sem = semantic.semantic_scores(
            trajectories, run.verifier, target=run.cfg.semantic_target,
            max_description_chars=rc.protocol.max_description_chars, batch_size=run.cfg.verifier_batch_size,
        )
        metrics.update(semantic.semantic_metrics(sem))
    keep = ("reward_mean", "accuracy", "hit_rate", "iou_mean", "semantic_mean", "tool_call_rate", "invalid_box_rate",
            "turns_mean", "description_missing_rate", "answer_rate")
    return {f"eval/{k}": metrics[k] for k in keep if k in metrics} | {"eval/n": float(len(trajectories))}


def eval_text(metrics: dict[str, float]) -> str:
    """One line of held-out metrics for the progress display."""
    return "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items() if k != "eval/n")


__all__ = ["eval_text", "evaluate"]
