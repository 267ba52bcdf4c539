"""The mapo agent loop for verl: verl's tool agent loop with our parser, zoom-in tool and verifier.

Registered as ``mapo_zoom_agent`` (verl's ``@register``); select it with
``actor_rollout_ref.rollout.agent.default_agent_loop=mapo_zoom_agent`` and load it with
``actor_rollout_ref.rollout.agent.agent_loop_config_path=examples/verl/agent_loop.yaml``,
whose entry passes the keyword arguments of :class:`MapoZoomAgentLoop`.

It subclasses verl's ``ToolAgentLoop`` and keeps its state machine, generation and
token bookkeeping (Continuous Token merging, response mask 0 on observation
tokens). What changes:

- parsing: :func:`mapo.agent.protocol.parse_turn` instead of verl's hermes parser. An
  unreadable tool call or a rejected box gives an error observation and the episode
  goes on (verl's parser drops invalid JSON and ends the episode).
- the tool: :func:`mapo.agent.tools.zoom_in` on the *original* image (from the prompt
  message), with ``bbox_2d`` in pixels of the view the model saw: the processor's
  smart-resize of the prompt image (its ``min/max_pixels`` and the policy's patch
  factor), mapped by :func:`mapo.agent.tools.view_to_original`.
- the policy directory (``policy_dir``, default verl's ``actor_rollout_ref.model.path``)
  decides the protocol and the patch factor: its ``mapo_protocol.json`` (written by
  ``mapo sft``/``mapo train``) gives the prompts the policy was trained with (used
  unless the YAML sets protocol fields, as in ``mapo train``) and its
  ``patch_size x merge_size`` (28 px Qwen2.5-VL, 32 px Qwen3-VL); without a record
  the factor is the processor's own. A record that disagrees with the processor is
  refused. No default of 14 or 28 is assumed anywhere.
- the observation: :func:`mapo.agent.protocol.observation_message` (role and texts from
  the protocol config) with the crop, instead of a ``tool`` message.
- the end of an episode: each observation's description and crop are scored by our
  verifier, batched across the episodes that finish together in this worker
  (:class:`~.episode.SemanticBatcher`), and the per-observation scores, the segment
  spans and the parse results go into ``extra_fields`` (-> ``non_tensor_batch``), where
  the estimator (:mod:`.estimator`) and the reward function (:mod:`.reward`) read them.

Departures from our own engine (:mod:`mapo.engine.rollout`): the token budget is verl's
``rollout.response_length`` (verl stops when the response reaches it, and an
observation that would reach it is not appended); turns are limited by
``multi_turn.max_assistant_turns``; images by ``max_images`` here.
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import AgentState, ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall

from mapo.core.config import from_dict
from mapo.data import open_image
from mapo.integrations.verl.episode import SemanticBatcher, ZoomEpisode
from mapo.integrations.verl.estimator import _plain
from mapo.agent.protocol import ProtocolConfig, parse_turn, protocol_for_policy
from mapo.agent.tools import ToolConfig, args_json, smart_resize, with_factor

logger = logging.getLogger(__name__)

# The episode of the agent loop running in the current asyncio task. verl's
# ToolAgentLoop.run builds its AgentData internally and hands it only to the state
# handlers; a context variable (one per task) links them to our run() without
# putting non-picklable state into AgentData.extra_fields, which verl ships on.
_SLOT: contextvars.ContextVar[dict] = contextvars.ContextVar("mapo_zoom_episode")

# One batcher per (verifier settings) per worker process: the agent loops of a worker
# share one event loop, so their finished episodes meet here.
_BATCHERS: dict[tuple, SemanticBatcher] = {}


class ProtocolToolParser:
    """verl's ``ToolParser`` interface on top of :func:`mapo.agent.protocol.parse_turn`.

    Returns one call (under the name the model wrote, ``protocol.tool_name`` when it
    wrote none) when the turn's action is a tool call, readable or not, so that verl
    moves to the tool state; the loop then runs it with :class:`ZoomEpisode`, which
    takes any registered tool (:func:`mapo.agent.tools.run_tool`).
    """

    def __init__(self, protocol: ProtocolConfig, tokenizer: Any) -> None:
        self.protocol = protocol
        self.tokenizer = tokenizer

    @property
    def stop_token_ids(self) -> list[int]:
        return []  # turns end at the end-of-turn id, as in mapo.engine.rollout

    async def extract_tool_calls(self, responses_ids: list[int], tools: Any = None) -> tuple[str, list[FunctionCall]]:
        text = self.tokenizer.decode(responses_ids, skip_special_tokens=True)
        turn = parse_turn(text, self.protocol)
        if turn.action != "tool_call":
            return text, []
        call = turn.tool_call
        arguments = call.raw if call.args is None else json.dumps(args_json(call.args))
        return text, [FunctionCall(name=call.name or self.protocol.tool_name, arguments=arguments)]


def original_image(messages: list[dict]) -> Image.Image:
    """The first image of the prompt messages, as the dataset stored it (before any resize)."""
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image":
                for key in ("bytes", "image", "path"):
                    source = part.get(key)
                    if isinstance(source, dict) and "bytes" in source:
                        source = source["bytes"]
                    if source is not None:
                        return open_image(source.copy() if isinstance(source, Image.Image) else source)
    raise ValueError(
        "the prompt has no image: mapo_zoom_agent needs one image per sample (DeepEyes format: an '<image>' "
        "placeholder in the prompt and the image in the 'images' column)"
    )


def processor_factor(processor: Any) -> int | None:
    """``patch_size * merge_size`` of a Qwen-VL processor's image processor (None when it names neither)."""
    ip = getattr(processor, "image_processor", None)
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    return int(patch) * int(merge) if patch and merge else None


def policy_factor(policy_dir: str | None, processor: Any) -> int:
    """The patch factor of the policy: its ``mapo_protocol.json`` record, checked against the processor,
    else the processor's own.

    Raises:
        ValueError: neither tells the factor, or they disagree.
    """
    from mapo.policy.load import read_patch_factor

    recorded = read_patch_factor(policy_dir) if policy_dir else None
    found = processor_factor(processor)
    if recorded is not None and found is not None and recorded != found:
        raise ValueError(
            f"{policy_dir}/mapo_protocol.json records a patch factor of {recorded} px but the processor's "
            f"patch_size x merge_size is {found}; the processor belongs to another model"
        )
    factor = recorded or found
    if factor is None:
        raise ValueError(
            "mapo_zoom_agent cannot tell the policy's patch factor: no 'vision' record in mapo_protocol.json "
            "and the processor names no patch_size/merge_size"
        )
    return factor


def processor_view_size(processor: Any, image: Image.Image, factor: int) -> tuple[int, int]:
    """(width, height) of ``image`` as the Qwen-VL image processor will resize it (sides multiples of ``factor``)."""
    ip = getattr(processor, "image_processor", None)
    if ip is None:
        raise ValueError("mapo_zoom_agent needs the model's processor (a Qwen-VL AutoProcessor)")
    size = getattr(ip, "size", None) or {}
    min_pixels = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
    max_pixels = size.get("longest_edge") or getattr(ip, "max_pixels", None)
    if not min_pixels or not max_pixels:
        raise ValueError(f"cannot read min/max pixels from the image processor {type(ip).__name__}")
    h, w = smart_resize(image.height, image.width, factor, int(min_pixels), int(max_pixels))
    return w, h


@register("mapo_zoom_agent")
class MapoZoomAgentLoop(ToolAgentLoop):
    """verl's ToolAgentLoop, with mapo's protocol, zoom-in tool and batched verifier.

    Keyword arguments (from the agent-loop YAML entry):
        protocol: fields of :class:`mapo.agent.protocol.ProtocolConfig` (tags, observation role and texts);
            left empty, the policy directory's recorded protocol is used.
        policy_dir: the policy directory whose ``mapo_protocol.json`` gives the protocol and the
            patch factor (default: verl's ``actor_rollout_ref.model.path``).
        tool: fields of :class:`mapo.agent.tools.ToolConfig` (box validation, observation pixel budget).
        max_images: images per trajectory, the global view included.
        verifier_path: local CLIP/SigLIP directory; None skips scoring (every score absent).
        verifier_device: where the verifier runs in the rollout worker.
        semantic_target: ``description`` | ``label`` | ``both`` (as ``mapo train``).
        verifier_batch_episodes, verifier_wait_s: batching of finished episodes.
    """

    def __init__(
        self,
        *args: Any,
        protocol: dict | None = None,
        tool: dict | None = None,
        max_images: int = 5,
        verifier_path: str | None = None,
        verifier_device: str = "cpu",
        semantic_target: str = "description",
        verifier_batch_episodes: int = 64,
        verifier_wait_s: float = 0.05,
        policy_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        from mapo.policy.load import read_protocol

        super().__init__(*args, **kwargs)
        policy_dir = policy_dir or _model_path(self.config)
        configured = from_dict(ProtocolConfig, _plain(protocol) or {}, prefix="protocol.")
        recorded = read_protocol(policy_dir) if policy_dir else None
        self.protocol = protocol_for_policy(configured, recorded, on_conflict=logger.warning)
        tool_config = from_dict(ToolConfig, _plain(tool) or {}, prefix="tool.")
        self.tool_config = with_factor(tool_config, policy_factor(policy_dir, self.processor))
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images must be a positive integer, got {max_images!r}")
        self.max_images = max_images
        self.tool_parser = ProtocolToolParser(self.protocol, self.tokenizer)
        self.batcher = _batcher(verifier_path, verifier_device, semantic_target, self.protocol, verifier_batch_episodes, verifier_wait_s)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        slot: dict[str, Any] = {"original": original_image(kwargs["raw_prompt"])}
        token = _SLOT.set(slot)
        try:
            output = await super().run(sampling_params, **kwargs)
        finally:
            _SLOT.reset(token)
        episode: ZoomEpisode = slot["episode"]
        episode.finish("max_turns")  # no-op unless verl ended the episode without telling us why
        semantic = await self.batcher.score(episode) if self.batcher else [None] * episode.num_observations
        output.extra_fields.update(episode.extra_fields(semantic))
        return output

    async def _handle_pending_state(self, agent_data: Any, sampling_params: dict[str, Any]) -> AgentState:
        state = await super()._handle_pending_state(agent_data, sampling_params)
        slot = _SLOT.get()
        view_source = agent_data.image_data[0] if agent_data.image_data else slot["original"]
        slot["episode"] = ZoomEpisode(
            slot["original"],
            protocol=self.protocol,
            tool=self.tool_config,
            max_images=self.max_images,
            view_wh=processor_view_size(self.processor, view_source, self.tool_config.factor),
        )
        return state

    async def _handle_generating_state(
        self, agent_data: Any, sampling_params: dict[str, Any], ignore_termination: bool = False
    ) -> AgentState:
        episode: ZoomEpisode = _SLOT.get()["episode"]
        start = len(agent_data.response_mask)
        state = await super()._handle_generating_state(agent_data, sampling_params, ignore_termination)
        end = len(agent_data.response_mask)
        text = self.tokenizer.decode(agent_data.response_ids, skip_special_tokens=True)
        limit = None if state == AgentState.PROCESSING_TOOLS else self._limit_reason(agent_data)
        pending = episode.assistant_turn(text, (start, end), limit_reason=limit)
        _SLOT.get()["pending"] = pending
        return AgentState.PROCESSING_TOOLS if pending is not None else AgentState.TERMINATED

    def _limit_reason(self, agent_data: Any) -> str | None:
        """Why verl will not generate another turn (None: the turn itself ended the episode)."""
        if len(agent_data.response_mask) >= self.response_length:
            return "max_tokens"
        if self.max_assistant_turns and agent_data.assistant_turns >= self.max_assistant_turns:
            return "max_turns"
        if self.max_user_turns and agent_data.user_turns >= self.max_user_turns:
            return "max_turns"
        return None

    async def _handle_processing_tools_state(self, agent_data: Any) -> AgentState:
        slot = _SLOT.get()
        episode: ZoomEpisode = slot["episode"]
        pending = slot.pop("pending")
        self._assert_mm_supported(pending.crop is not None)
        previous = list(agent_data.messages)
        updated = previous + [pending.message]
        merge_result, response_mask, response_logprobs = await self.ct_merge_context_msg(
            previous,
            updated,
            agent_data.prompt_ids,
            agent_data.response_mask,
            agent_data.response_logprobs or None,
            tools=self.tool_schemas,
        )
        if len(response_mask) >= self.response_length:
            episode.finish("max_tokens")  # checked before appending: an image is never truncated (docs/rollout.md)
            return AgentState.TERMINATED
        agent_data.messages = updated
        agent_data.prompt_ids = merge_result.token_ids
        agent_data.response_mask = response_mask
        if agent_data.response_logprobs:
            agent_data.response_logprobs = response_logprobs or []
        if pending.crop is not None:
            agent_data.image_data = list(agent_data.image_data or []) + [pending.crop]
        episode.add_observation(pending)
        agent_data.user_turns += 1
        return AgentState.GENERATING


def _model_path(config: Any) -> str | None:
    """verl's ``actor_rollout_ref.model.path`` when it is a local directory (else None)."""
    try:
        path = config.actor_rollout_ref.model.path
    except AttributeError:
        return None
    from pathlib import Path

    return str(path) if path and Path(str(path)).is_dir() else None


def _batcher(path, device, target, protocol, max_episodes, wait_s) -> SemanticBatcher | None:
    if path is None:
        return None
    key = (str(path), str(device), target, protocol.max_description_chars, max_episodes, wait_s)
    if key not in _BATCHERS:
        from mapo.algo.semantic import semantic_scores
        from mapo.verifier.clip import load_verifier

        verifier = load_verifier(path, device=device)

        def score(episodes):
            return semantic_scores(episodes, verifier, target=target, max_description_chars=protocol.max_description_chars)

        _BATCHERS[key] = SemanticBatcher(score, max_episodes=max_episodes, max_wait_s=wait_s)
    return _BATCHERS[key]


__all__ = ["MapoZoomAgentLoop", "ProtocolToolParser", "original_image", "policy_factor", "processor_view_size"]
