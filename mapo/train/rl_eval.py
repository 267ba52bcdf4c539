"""The RL run's periodic held-out evaluation: :func:`mapo.metrics.heldout.evaluate` reduced to ``eval/*`` metrics."""

from __future__ import annotations

from mapo.metrics import heldout
from mapo.train.rl_run import Run

# The held-out metrics an RL run logs, as ``eval/<key>`` (formulas: docs/metrics.md).
LOGGED = ("reward_mean", "accuracy", "hit_rate", "iou_mean", "semantic_mean", "tool_call_rate", "invalid_call_rate",
          "turns_mean", "description_missing_rate", "answer_rate", "crop_hit_rate", "found_rate", "recovered_rate",
          "tool_calls_mean", "n")


def evaluate(run: Run) -> dict[str, float]:
    """Greedy rollouts (G = 1) on the held-out set: accuracy, hit rate, IoU, semantic mean, ... as ``eval/*``."""
    samples = run.data.heldout
    if not samples:
        return {}
    result = heldout.evaluate(
        samples, run.policy, run.rollout_cfg, reward=run.cfg.reward, verifier=run.verifier,
        semantic_target=run.cfg.semantic_target, verifier_batch_size=run.cfg.verifier_batch_size,
    )
    return {f"eval/{k}": result.metrics[k] for k in LOGGED if k in result.metrics}


def eval_text(metrics: dict[str, float]) -> str:
    """One line of held-out metrics for the progress display."""
    return "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items() if k != "eval/n")


__all__ = ["LOGGED", "eval_text", "evaluate"]
