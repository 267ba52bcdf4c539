"""The step logic of one zoom-in episode, free of verl, and batched semantic scoring.

:class:`ZoomEpisode` is what the verl agent loop (:mod:`.agent_loop`) delegates to
after each generated assistant turn: it parses the turn with
:func:`mapo.protocol.parse_turn`, runs :func:`mapo.tools.zoom_in` (the same
view->original mapping as training, evaluation and the report), and builds the
observation message of :func:`mapo.protocol.observation_message`. It keeps what the
estimator and the reward need and exposes it as the attributes
:func:`mapo.semantic.semantic_scores` and :func:`mapo.reward.outcome_reward`
read from a :class:`mapo.rollout.Trajectory`, so scores and rewards go through the
very same functions as ``mapo train``.

Rules copied from :mod:`mapo.rollout` (our own engine): an answer ends the episode; a
turn with neither an answer nor a tool call ends it; a tool call on the last allowed
turn is not executed; an observation is recorded only once it is known to fit the
budget (:meth:`ZoomEpisode.add_observation`); an unreadable call or a rejected box
gives a text error observation and the episode goes on (verl's own tool parser
drops invalid JSON silently and ends the episode).

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

from mapo.protocol import ProtocolConfig, Turn, observation_message, parse_turn
from mapo.rollout import ToolCallRecord, _readable
from mapo.tools import ToolConfig, view_size, zoom_in


@dataclass(frozen=True)
class PendingObservation:
    """A tool result that is appended only if it fits the budget.

    ``message`` is the chat message (role from the protocol config) with the crop
    embedded as ``{"type": "image", "image": crop}``, verl's convention.
    """

    record: ToolCallRecord
    crop: Image.Image | None
    message: dict


class ZoomEpisode:
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
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images must be a positive integer (the global view counts), got {max_images!r}")
        self.image = image.convert("RGB") if image.mode != "RGB" else image
        self.protocol = protocol
        self.tool = tool
        self.max_images = max_images
        self.view_wh = view_wh if view_wh is not None else view_size(self.image.size, tool)
        self.turns: list[Turn] = []
        self.spans: list[tuple[int, int]] = []
        self.tool_calls: list[ToolCallRecord] = []
        self.crops: list[Image.Image | None] = []
        self.finish_reason: str | None = None

    # ---- what semantic_scores / outcome_reward read (Trajectory's attribute names)

    @property
    def num_observations(self) -> int:
        return len(self.tool_calls)

    @property
    def descriptions(self) -> list[str | None]:
        """The description opening the turn after each observation; None when missing or no turn followed."""
        return [self.turns[k].description if k < len(self.turns) else None for k in range(1, self.num_observations + 1)]

    @property
    def used_tool(self) -> bool:
        return any(c.valid for c in self.tool_calls)

    @property
    def answer_text(self) -> str | None:
        return self.turns[-1].answer if self.turns and self.finish_reason == "answer" else None

    @property
    def num_images(self) -> int:
        """Images in the context: the global view and every crop."""
        return 1 + sum(c is not None for c in self.crops)

    # ---- steps

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
        turn = parse_turn(text, self.protocol)
        self.turns.append(turn)
        self.spans.append((start, end))
        if turn.answer is not None:
            return self.finish("answer")
        if turn.tool_call is None:
            return self.finish(limit_reason or "no_tool_call")
        if limit_reason is not None:
            return self.finish(limit_reason)
        return self._run_tool(turn)

    def _run_tool(self, turn: Turn) -> PendingObservation | None:
        call = turn.tool_call
        crop = None
        if call.bbox is None:
            reason = next((e for e in turn.errors if e.startswith("tool_call_")), "the tool call could not be read")
            record = ToolCallRecord(None, None, None, call.label, False, reason)
        else:
            result = zoom_in(self.image, call.bbox, self.view_wh, self.tool)
            record = ToolCallRecord(call.bbox, result.box_view, result.box_original, call.label, result.error is None, result.error)
            crop = result.crop
        if crop is not None and self.num_images + 1 > self.max_images:
            return self.finish("max_images")
        if crop is None:
            message = observation_message(self.protocol, error=_readable(record.error or "the tool call failed"))
        else:
            message = observation_message(self.protocol)
            message["content"] = [
                {"type": "image", "image": crop} if part.get("type") == "image" else part for part in message["content"]
            ]
        return PendingObservation(record=record, crop=crop, message=message)

    def add_observation(self, pending: PendingObservation) -> None:
        """Record an observation that was appended to the context."""
        self.tool_calls.append(pending.record)
        self.crops.append(pending.crop)

    def finish(self, reason: str) -> None:
        """End the episode (first reason wins)."""
        if self.finish_reason is None:
            self.finish_reason = reason
        return None

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


ScoreFn = Callable[[Sequence[ZoomEpisode]], Any]


class SemanticBatcher:
    """Score the observations of concurrently finishing episodes together.

    ``score_fn(episodes)`` returns an object with ``scores`` (B, K) NaN-padded, as
    :func:`mapo.semantic.semantic_scores` does. A batch is flushed when it
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
