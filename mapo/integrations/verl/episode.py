"""The verl side of one zoom-in episode, free of verl, and batched semantic scoring.

:class:`ZoomEpisode` is what the verl agent loop (:mod:`.agent_loop`) delegates to
after each generated assistant turn. It is a :class:`mapo.agent.episode.Episode`, the same
rules as our own engine (:mod:`mapo.engine.rollout`): it parses the turn with
:func:`mapo.agent.protocol.parse_turn`, runs the tool on the original image (the same
view->original mapping as training, evaluation and the report), and builds the
observation message of :func:`mapo.agent.protocol.observation_message`; an answer ends the
episode, a turn with neither an answer nor a tool call ends it, a tool call on the
last allowed turn is not executed, an observation is recorded only once it is known
to fit the budget (:meth:`ZoomEpisode.add_observation`), and an unreadable call or a
rejected box gives a text error observation and the episode goes on (verl's own tool
parser drops invalid JSON silently and ends the episode). verl enforces its own turn
and token limits and says so through ``limit_reason``. The episode exposes what
:func:`mapo.algo.semantic.semantic_scores` and :func:`mapo.algo.reward.outcome_reward` read
from a :class:`mapo.engine.trajectory.Trajectory`, so scores and rewards go through the very
same functions as ``mapo train``; on top it keeps each turn's token span.

:class:`SemanticBatcher` gathers finished episodes from the agent loops running
concurrently in one verl worker and scores their (description, crop) pairs in one
verifier call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mapo.agent.episode import Episode, Observation
from mapo.agent.protocol import ProtocolConfig
from mapo.agent.tools import ToolConfig, view_size
from mapo.agent.episode import ExecutedCall


@dataclass(frozen=True)
class PendingObservation:
    """A tool result that is appended only if it fits the budget.

    ``message`` is the chat message (role from the protocol config) with the crop
    embedded as ``{"type": "image", "image": crop}``, verl's convention.
    """

    call: ExecutedCall
    crop: Image.Image | None
    message: dict


class ZoomEpisode(Episode):
    """One episode's parsed turns, observations and segment spans.

    ``spans[j]`` is the ``[start, end)`` range of assistant turn ``j`` in the response
    tokens (verl's ``response_ids``); observation ``k`` (1-based) is the result of the
    tool call in turn ``k-1``.
    """

    def __init__(
        self,
        image: Image.Image,
        *,
        protocol: ProtocolConfig,
        tool: ToolConfig,
        max_images: int,
        view_wh: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be the original PIL image of the sample, got {type(image).__name__}")
        image = image.convert("RGB") if image.mode != "RGB" else image
        view_wh = view_wh if view_wh is not None else view_size(image.size, tool)
        super().__init__(image, view_wh, protocol=protocol, tool=tool, max_images=max_images)
        self.spans: list[tuple[int, int]] = []

    def assistant_turn(self, text: str, span: tuple[int, int], limit_reason: str | None = None) -> PendingObservation | None:
        """Record one generated turn; return the observation to append, or None when the episode ends.

        Args:
            text: the decoded assistant turn (without the end-of-turn token).
            span: ``[start, end)`` of its tokens in the response.
            limit_reason: set when the engine will not generate another turn (e.g.
                ``max_turns``, ``max_tokens``); a tool call is then not executed.
        """
        start, end = (int(v) for v in span)
        if not 0 <= start <= end or (self.spans and start < self.spans[-1][1]):
            raise ValueError(f"span must be an increasing [start, end) after {self.spans[-1:]}, got {span!r}")
        if self.finish_reason is not None:
            raise ValueError(f"the episode already ended ({self.finish_reason}); no turn may follow")
        self.spans.append((start, end))
        observation = super().assistant_turn(text, limit_reason=limit_reason)
        return None if observation is None else _with_crop(observation)

    def extra_fields(self, semantic: Sequence[float | None]) -> dict[str, Any]:
        """What goes into verl's ``AgentLoopOutput.extra_fields`` (plain, picklable data, no images)."""
        if len(semantic) != self.num_observations:
            raise ValueError(f"semantic must hold one score per observation ({self.num_observations}), got {len(semantic)}")
        return {
            "mapo_semantic": [None if s is None or math.isnan(s) else float(s) for s in semantic],
            "mapo_segment_spans": [list(s) for s in self.spans],
            "mapo_descriptions": self.descriptions,
            "mapo_labels": [c.label for c in self.tool_calls],
            "mapo_boxes_original": [list(c.box_original) if c.box_original else None for c in self.tool_calls],
            "mapo_turn_errors": [list(t.error_codes) for t in self.turns],
            "mapo_answer": self.answer_text,
            "mapo_finish_reason": self.finish_reason or "max_turns",
            "mapo_used_tool": self.used_tool,
            "mapo_invalid_calls": sum(not c.valid for c in self.tool_calls),
        }


def _with_crop(observation: Observation) -> PendingObservation:
    """The observation with its crop embedded in the message's image part (verl's convention)."""
    message = observation.message
    if observation.crop is not None:
        message = dict(message, content=[
            {"type": "image", "image": observation.crop} if part.get("type") == "image" else part
            for part in message["content"]
        ])
    return PendingObservation(call=observation.call, crop=observation.crop, message=message)


ScoreFn = Callable[[Sequence[ZoomEpisode]], Any]


class SemanticBatcher:
    """Score the observations of concurrently finishing episodes together.

    ``score_fn(episodes)`` returns an object with ``scores`` (B, K) NaN-padded, as
    :func:`mapo.algo.semantic.semantic_scores` does. A batch is flushed when it
    holds ``max_episodes`` episodes or ``max_wait_s`` after its first one arrived;
    ``score_fn`` runs in a thread so the event loop keeps generating meanwhile.
    """

    def __init__(self, score_fn: ScoreFn, *, max_episodes: int = 64, max_wait_s: float = 0.05) -> None:
        if isinstance(max_episodes, bool) or not isinstance(max_episodes, int) or max_episodes < 1:
            raise ValueError(f"max_episodes must be a positive integer, got {max_episodes!r}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds, got {max_wait_s!r}")
        self.score_fn = score_fn
        self.max_episodes = max_episodes
        self.max_wait_s = max_wait_s
        self.calls = 0  # score_fn calls so far (tests and metrics)
        self._pending: list[tuple[ZoomEpisode, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def score(self, episode: ZoomEpisode) -> list[float | None]:
        """The semantic score of each observation of ``episode`` (None where absent)."""
        if episode.num_observations == 0:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((episode, future))
        if len(self._pending) >= self.max_episodes:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[ZoomEpisode, asyncio.Future]]) -> None:
        episodes = [ep for ep, _ in batch]
        try:
            self.calls += 1
            result = await asyncio.get_running_loop().run_in_executor(None, self.score_fn, episodes)
            scores = result.scores  # (B, K)
        except Exception as err:  # every waiting episode must hear about the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for i, (ep, future) in enumerate(batch):
            row = [float(v) for v in scores[i, : ep.num_observations].tolist()]
            future.set_result([None if math.isnan(v) else v for v in row])


__all__ = ["PendingObservation", "SemanticBatcher", "ZoomEpisode"]
