"""mapo's outcome reward behind verl's custom-reward hook.

verl config::

    reward.custom_reward_function.path=pkg://mapo.integrations.verl.reward
    reward.custom_reward_function.name=compute_score

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)``
once per trajectory. With the mapo agent loop, verl's reward managers merge the
loop's ``extra_fields`` into ``extra_info``, so the parsed answer, the per-turn
parser errors, the finish reason and whether a tool call returned an image come
from the loop, and :func:`mapo.algo.reward.outcome_reward` (the formula ``mapo train``
uses) computes ``R = w_acc*acc + w_fmt*fmt + w_tool*acc*used_tool``.

Without those fields (e.g. verl's single-turn loop), ``solution_str`` is parsed as
one assistant turn. Multiple choice needs the option texts in
``extra_info["options"]`` (and the letter as ``ground_truth``); otherwise the
answer is compared with ``ground_truth`` as normalised text (DeepEyes uses an LLM
judge for open answers; we do not, see :mod:`mapo.algo.reward`). Reward weights can be
set with ``reward.custom_reward_function.reward_kwargs`` (fields of
:class:`mapo.algo.reward.RewardConfig`).

It uses nothing from verl itself (the package import registers the estimators as a side effect).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mapo.core.config import from_dict
from mapo.agent.protocol import parse_turn
from mapo.algo.reward import RewardConfig, outcome_reward

_LOOP_KEYS = ("mapo_answer", "mapo_turn_errors", "mapo_finish_reason", "mapo_used_tool")


def _options(extra_info: dict) -> tuple[str, ...]:
    options = extra_info.get("options") or ()
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"extra_info['options'] must be a list of option texts, got {options!r}")
    return tuple(options)


def _trajectory(solution_str: str, ground_truth: str, extra_info: dict) -> SimpleNamespace:
    """A stand-in with the attributes :func:`mapo.algo.reward.outcome_reward` reads from a Trajectory."""
    sample = SimpleNamespace(answer=str(ground_truth), options=_options(extra_info))
    if all(k in extra_info for k in _LOOP_KEYS):
        turns = [SimpleNamespace(errors=tuple(codes)) for codes in extra_info["mapo_turn_errors"]]
        return SimpleNamespace(
            sample=sample,
            answer_text=extra_info["mapo_answer"],
            finish_reason=extra_info["mapo_finish_reason"],
            turns=turns,
            used_tool=bool(extra_info["mapo_used_tool"]),
        )
    turn = parse_turn(solution_str)
    return SimpleNamespace(
        sample=sample,
        answer_text=turn.answer,
        finish_reason="answer" if turn.answer is not None else "no_tool_call",
        turns=[turn],
        used_tool=False,
    )


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **reward_kwargs: Any
) -> dict[str, float]:
    """verl's custom reward: ``{"score": R, "acc", "fmt", "used_tool"}`` of one trajectory.

    ``reward_kwargs`` are :class:`mapo.algo.reward.RewardConfig` fields (from verl's
    ``custom_reward_function.reward_kwargs``); unknown names raise ValueError.
    """
    if not isinstance(solution_str, str):
        raise ValueError(f"solution_str must be the decoded response text, got {type(solution_str).__name__}")
    if ground_truth is None:
        raise ValueError("ground_truth is missing: DeepEyes-format rows keep it in reward_model.ground_truth")
    extra_info = dict(extra_info or {})
    config = from_dict(RewardConfig, reward_kwargs, prefix="reward_kwargs.") if reward_kwargs else RewardConfig()
    breakdown = outcome_reward(_trajectory(solution_str, ground_truth, extra_info), config)
    return {"score": breakdown.total, "acc": breakdown.acc, "fmt": breakdown.fmt, "used_tool": breakdown.used_tool}


__all__ = ["compute_score"]
