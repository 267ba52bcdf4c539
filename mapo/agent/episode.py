"""The rules of one episode, shared by the local rollout engine and the verl agent loop.

An engine generates an assistant turn, decodes it and hands the text to
:meth:`Episode.assistant_turn`, which parses it (:func:`mapo.agent.protocol.parse_turn`)
and decides what happens next:

- an ``<answer>`` ends the episode (``answer``);
- a turn with neither an answer nor a tool call ends it (``no_tool_call``, or the
  token limit that cut the turn short);
- a tool call on the last allowed turn is not executed (``max_turns``): there is
  no turn left to look at its result;
- otherwise the tool runs (:meth:`Episode.call_tool`, the one place a tool is
  invoked) and the episode returns the :class:`Observation` to append: the crop,
  or for an unreadable call or a rejected box a text error the model can read,
  after which the episode goes on. A crop that would exceed ``max_images`` ends
  the episode instead (``max_images``).

The engine tokenizes the observation and checks it fits its token budget *before*
appending it (an observation is never truncated, docs/rollout.md): it then calls
:meth:`Episode.add_observation`, or :meth:`Episode.finish` with ``max_tokens``.
Pure Python: no model, no tokens. The attribute names (``turns``, ``tool_calls``,
``crops``, ``descriptions``, ``answer_text``, ``used_tool``, ``finish_reason``) are
those of :class:`mapo.engine.trajectory.Trajectory`, so :func:`mapo.algo.semantic.semantic_scores`
and :func:`mapo.algo.reward.outcome_reward` read an episode as they read a trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mapo.agent import protocol as protocol_mod
from mapo.agent.protocol import ProtocolConfig, Turn
from mapo.agent.tools import ToolConfig, args_json, run_tool


@dataclass(frozen=True)
class ExecutedCall:
    """One executed tool call, i.e. one observation.

    ``raw_bbox`` is the box as the model wrote it (view pixels, None if unreadable);
    ``bbox_view`` the validated box the tool used (view pixels) and
    ``box_original`` the same box in original pixels; both None when invalid, and
    for a tool that selects no region (rotate). ``tool`` is the registry name
    ("" for a call that could not be read) and ``args`` the call's arguments as
    JSON data (:func:`mapo.agent.tools.args_json`), None when unreadable.
    """

    raw_bbox: tuple[float, float, float, float] | None
    bbox_view: tuple[float, float, float, float] | None
    box_original: tuple[float, float, float, float] | None
    label: str | None
    valid: bool
    error: str | None
    tool: str = "image_zoom_in_tool"
    args: dict | None = None

    @property
    def region(self) -> tuple[float, float, float, float] | None:
        """The original-pixel box a valid call showed; None for an error or a tool without a region."""
        return self.box_original if self.valid else None


FINISH_REASONS = (
    "answer",  # the turn held an <answer>
    "no_tool_call",  # the turn ended (end-of-turn id) with neither a tool call nor an answer
    "max_new_tokens",  # the turn hit max_new_tokens_per_turn with neither a tool call nor an answer
    "max_turns",  # the last allowed turn made a tool call
    "max_tokens",  # the next turn or observation would exceed max_total_tokens
    "max_images",  # the next observation image would exceed max_images
    "prompt_too_long",  # the prompt alone leaves no room for a single generated token
)


def readable(error: str) -> str:
    """The sentence of a protocol error (``"tool_call_json: the call ..."`` -> ``"the call ..."``)."""
    code, sep, sentence = error.partition(": ")
    return sentence if sep and code in protocol_mod.ERROR_CODES else error


@dataclass(frozen=True)
class Observation:
    """A tool result, appended to the context only if it fits the engine's token budget.

    ``message`` is the protocol's observation message (:func:`mapo.agent.protocol.observation_message`):
    with an image placeholder when ``crop`` is set, else the readable error text.
    """

    call: ExecutedCall
    crop: Image.Image | None
    message: dict


class Episode:
    """One episode's parsed turns, observations and finish reason.

    Args:
        image: the sample's original image; tool calls crop it.
        view_wh: (width, height) of the global view the model sees; tool boxes are in its pixels.
        protocol: tags and observation texts.
        tool: the tool's box validation and pixel budgets (with the policy's patch factor).
        max_images: images per episode, the global view included.
        max_turns: assistant turns per episode; None when the engine enforces its own turn
            limit (verl) and says so through ``limit_reason``.
    """

    def __init__(
        self,
        image: Image.Image,
        view_wh: tuple[int, int],
        *,
        protocol: ProtocolConfig,
        tool: ToolConfig,
        max_images: int,
        max_turns: int | None = None,
    ) -> None:
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be the original PIL image of the sample, got {type(image).__name__}")
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images must be a positive integer (the global view counts), got {max_images!r}")
        self.image = image
        self.view_wh = view_wh
        self.protocol = protocol
        self.tool = tool
        self.max_images = max_images
        self.max_turns = max_turns
        self.turns: list[Turn] = []
        self.tool_calls: list[ExecutedCall] = []  # (K)
        self.crops: list[Image.Image | None] = []  # (K)
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
        """At least one tool call returned an image."""
        return any(c.valid for c in self.tool_calls)

    @property
    def answer_text(self) -> str | None:
        return self.turns[-1].answer if self.turns and self.finish_reason == "answer" else None

    @property
    def num_images(self) -> int:
        """Images in the context: the global view and every crop."""
        return 1 + sum(c is not None for c in self.crops)

    # ---- steps

    def assistant_turn(self, text: str, *, cut: str | None = None, limit_reason: str | None = None) -> Observation | None:
        """Record one generated turn; return the observation to append, or None when the episode ended.

        Args:
            text: the decoded assistant turn (without the end-of-turn token).
            cut: why the turn stopped without an end-of-turn id (``max_new_tokens``,
                ``max_tokens``), None when it ended normally; the finish reason of a turn
                with neither an answer nor a tool call.
            limit_reason: set when the engine will generate no further turn (e.g. verl's
                ``max_turns``, ``max_tokens``); a tool call is then not executed.
        """
        if self.finish_reason is not None:
            raise ValueError(f"the episode already ended ({self.finish_reason}); no turn may follow")
        turn = protocol_mod.parse_turn(text, self.protocol)
        self.turns.append(turn)
        if turn.answer is not None:
            return self.finish("answer")
        if turn.tool_call is None:
            return self.finish(cut or limit_reason or "no_tool_call")
        if limit_reason is not None:
            return self.finish(limit_reason)
        if self.max_turns is not None and len(self.turns) >= self.max_turns:
            return self.finish("max_turns")
        call, crop = self.call_tool(turn)
        if crop is not None and self.num_images + 1 > self.max_images:
            return self.finish("max_images")
        error = None if crop is not None else readable(call.error or "the tool call failed")
        return Observation(call, crop, protocol_mod.observation_message(self.protocol, error=error))

    def call_tool(self, turn: Turn) -> tuple[ExecutedCall, Image.Image | None]:
        """Run the tool call of ``turn`` through the registry: the executed call, and the view (None for an error)."""
        call = turn.tool_call
        result = run_tool(call, self.image, self.view_wh, self.tool)
        call = ExecutedCall(
            call.bbox, result.box_view, result.box_original, call.label, result.ok, result.error,
            tool=result.tool, args=args_json(call.args),
        )
        return call, result.image

    def add_observation(self, observation: Observation) -> None:
        """Record an observation that was appended to the context."""
        self.tool_calls.append(observation.call)
        self.crops.append(observation.crop)

    def finish(self, reason: str) -> None:
        """End the episode (the first reason wins)."""
        if reason not in FINISH_REASONS:
            raise ValueError(f"finish reason must be one of {FINISH_REASONS}, got {reason!r}")
        if self.finish_reason is None:
            self.finish_reason = reason
        return None


__all__ = ["FINISH_REASONS", "Episode", "Observation", "ExecutedCall", "readable"]
