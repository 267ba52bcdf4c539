"""Outcome reward of a trajectory, and answer matching.

    R = w_acc * acc + w_fmt * fmt + w_tool * acc * used_tool

- ``acc`` is 1 when the final ``<answer>`` matches the sample's answer, else 0.
  Multiple choice: :func:`mapo.data.scoring.extract_choice` turns the answer text
  into an option letter ("B", "(B)", "B.", "The answer is B", or exactly one
  option's text) and it must equal ``sample.answer``. Open questions: the
  normalised texts (lower case, punctuation removed, spaces collapsed) must be equal.
- ``fmt`` is ``format_ok`` (0) for a well-formed trajectory and ``format_error``
  (-1) otherwise (DeepEyes' convention: the format term is a penalty). A
  trajectory is ill-formed when any assistant turn has a parser error
  (:attr:`mapo.agent.protocol.Turn.errors`, e.g. unclosed tags, invalid tool-call JSON,
  a missing or over-long description) or when it did not end with an answer.
- ``used_tool`` is 1 when at least one tool call returned an image.

Defaults are DeepEyes' weights 0.8 / 0.2 / 1.2. Departures: DeepEyes judges
open answers with an LLM and checks only ``<think>`` tag balance for format;
we match letters/text exactly (an LLM judge is not required) and use the
protocol parser's errors, which also cover MAPO's ``<description>`` rule.
Answers longer than ``max_answer_chars`` score ``acc = 0`` and count as a
format error, as in DeepEyes (guards against listing every option).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mapo.core.config import knob
from mapo.data.scoring import extract_choice

_PUNCT = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class RewardConfig:
    """Weights and values of the outcome reward."""

    w_acc: float = knob(0.8, "weight of answer accuracy (DeepEyes: 0.8)")
    w_fmt: float = knob(0.2, "weight of the format term (DeepEyes: 0.2)")
    w_tool: float = knob(1.2, "weight of the tool bonus acc * used_tool (DeepEyes: 1.2)")
    format_ok: float = knob(0.0, "fmt of a well-formed trajectory")
    format_error: float = knob(-1.0, "fmt of an ill-formed trajectory (DeepEyes: -1, a penalty)")
    max_answer_chars: int = knob(1000, "longer answers get acc = 0 and a format error (DeepEyes)")

    def __post_init__(self) -> None:
        for name in ("w_acc", "w_fmt", "w_tool", "format_ok", "format_error"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{name} must be a number, got {value!r}")
        if isinstance(self.max_answer_chars, bool) or not isinstance(self.max_answer_chars, int) or self.max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be a positive integer, got {self.max_answer_chars!r}")


@dataclass(frozen=True)
class RewardBreakdown:
    """The reward and its parts, for logging."""

    total: float
    acc: float  # 0 or 1
    fmt: float  # format_ok or format_error
    used_tool: float  # 0 or 1


def _normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def answer_matches(prediction: str | None, answer: str, options: Sequence[str] = ()) -> bool:
    """Whether ``prediction`` (the ``<answer>`` text) gives ``answer``.

    With ``options``, ``answer`` is the correct letter and the prediction is read
    with :func:`mapo.data.scoring.extract_choice`; without, texts are compared
    after normalisation.
    """
    if prediction is None:
        return False
    if not isinstance(prediction, str) or not isinstance(answer, str):
        raise ValueError(
            f"prediction and answer must be strings, got {type(prediction).__name__} and {type(answer).__name__}"
        )
    if options:
        return extract_choice(prediction, list(options)) == answer.strip()
    return bool(_normalise(answer)) and _normalise(prediction) == _normalise(answer)


def outcome_reward(trajectory: Any, config: RewardConfig = RewardConfig()) -> RewardBreakdown:
    """``R = w_acc*acc + w_fmt*fmt + w_tool*acc*used_tool`` of one :class:`mapo.engine.trajectory.Trajectory`."""
    sample = trajectory.sample
    answer = trajectory.answer_text
    too_long = answer is not None and len(answer) > config.max_answer_chars
    acc = 0.0 if too_long else float(answer_matches(answer, sample.answer, sample.options))
    well_formed = (
        trajectory.finish_reason == "answer"
        and not too_long
        and all(not turn.errors for turn in trajectory.turns)
    )
    fmt = config.format_ok if well_formed else config.format_error
    used_tool = float(trajectory.used_tool)
    total = config.w_acc * acc + config.w_fmt * fmt + config.w_tool * acc * used_tool
    return RewardBreakdown(total=total, acc=acc, fmt=fmt, used_tool=used_tool)


def outcome_rewards(trajectories: Sequence[Any], config: RewardConfig = RewardConfig()) -> torch.Tensor:
    """Rewards of ``B`` trajectories as a float32 tensor (B,)."""
    return torch.tensor([outcome_reward(t, config).total for t in trajectories], dtype=torch.float32)


__all__ = ["RewardBreakdown", "RewardConfig", "answer_matches", "outcome_reward", "outcome_rewards"]
