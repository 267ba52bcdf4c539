"""Text the model reads or is trained to write: the system and user prompts, observations, rendered turns."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from mapo.agent.protocol.config import DEFAULT_CONFIG, ProtocolConfig, _render_system, enabled_tools
from mapo.agent.tools import ZoomArgs, tool_of


def render_call(args: Any, config: ProtocolConfig = DEFAULT_CONFIG) -> str:
    """The text of a call to any enabled tool: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    ``args`` are the tool's typed arguments (``mapo.agent.tools.ZoomArgs``, ``RotateArgs``, ...).
    """
    tool = tool_of(args)
    if tool not in enabled_tools(config):
        raise ValueError(f"{tool.name} is not offered by this protocol; add it to extra_tools")
    body = '{"name": ' + json.dumps(tool.call_name(config)) + ', "arguments": ' + tool.render_arguments(args) + "}"
    return f"<{config.tool_call_tag}>{body}</{config.tool_call_tag}>"


def render_tool_call(bbox: Any, label: str | None = None, config: ProtocolConfig = DEFAULT_CONFIG) -> str:
    """The zoom-in call text: ``<tool_call>{"name": ..., "arguments": {"bbox_2d": [..], "label": ...}}</tool_call>``.

    ``bbox`` is ``(x1, y1, x2, y2)`` in view pixels; ``label`` is omitted when None.
    """
    return render_call(ZoomArgs(bbox, label), config)


def render_assistant_turn(
    *,
    think: str | None = None,
    description: str | None = None,
    bbox: Any = None,
    label: str | None = None,
    call: Any = None,
    answer: str | None = None,
    config: ProtocolConfig = DEFAULT_CONFIG,
) -> str:
    """An assistant turn in canonical order: description, think, then the tool call or the answer.

    The tool call is a zoom-in (``bbox``, ``label``) or any tool's typed arguments (``call``).
    """
    if bbox is not None and call is not None:
        raise ValueError("give either bbox (a zoom-in) or call (any tool), not both")
    if (bbox is not None or call is not None) and answer is not None:
        raise ValueError("give either bbox (a tool call) or answer, not both")
    if label is not None and bbox is None:
        raise ValueError("label belongs to a tool call: give bbox as well")
    parts = []
    if description is not None:
        parts.append(f"<{config.description_tag}>{description}</{config.description_tag}>")
    if think is not None:
        parts.append(f"<{config.think_tag}>{think}</{config.think_tag}>")
    if bbox is not None:
        parts.append(render_tool_call(bbox, label, config))
    if call is not None:
        parts.append(render_call(call, config))
    if answer is not None:
        parts.append(f"<{config.answer_tag}>{answer}</{config.answer_tag}>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- prompts


def note_to_stderr(message: str) -> None:
    print(f"mapo: note: {message}", file=sys.stderr)


def protocol_for_policy(
    configured: ProtocolConfig, trained: ProtocolConfig | None, *, on_conflict: Callable[[str], None] | None = note_to_stderr
) -> ProtocolConfig:
    """The protocol to prompt a policy with: what it was trained with, unless the config says otherwise.

    A policy is only as good as the prompt it was trained on (a tiny warm start trained on a
    one-line system prompt does not know the long default one), so a policy's recorded protocol
    (``Policy.protocol``, from ``mapo_protocol.json``) replaces a configured protocol that was left
    at the defaults. An explicitly configured protocol is kept even when it differs from the
    record (e.g. DeepEyes' prompts for a Qwen checkpoint); ``on_conflict(message)`` then says so
    (default: a note on stderr; ``None``: silent). Without a record the configured protocol is used as is.
    """
    if trained is None or configured == trained:
        return configured
    if configured == DEFAULT_CONFIG:
        return trained
    if on_conflict is not None:
        changed = sorted(
            name for name in configured.__dataclass_fields__ if getattr(configured, name) != getattr(trained, name)
        )
        on_conflict(
            f"the configured protocol differs from the one the policy was trained with in {', '.join(changed)}; "
            "using the configured one (leave protocol settings at their defaults to use the policy's own)"
        )
    return configured


def system_prompt(config: ProtocolConfig = DEFAULT_CONFIG) -> str:
    """The system prompt: the zoom-in tool, the tag grammar and the description rule (the template),
    then a section for each of ``extra_tools``."""
    sections = [tool.describe(tool.call_name(config), config) for tool in enabled_tools(config)[1:]]
    return "\n\n".join([_render_system(config), *sections])


def option_letters(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` options (at most 26)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 26:
        raise ValueError(f"n must be an integer in [0, 26], got {n!r}")
    return [chr(ord("A") + i) for i in range(n)]


def user_prompt(question: str, options: list[str] | tuple[str, ...] = (), config: ProtocolConfig = DEFAULT_CONFIG) -> str:
    """The question, the lettered options ``(A) ...`` one per line, then the answer instruction."""
    if not isinstance(question, str):
        raise ValueError(f"question must be a string, got {type(question).__name__}")
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"options must be a list of strings, got {options!r}")
    lines = [question.strip()]
    for letter, option in zip(option_letters(len(options)), options):
        lines.append(f"({letter}) {option}")
    lines.append(config.answer_instruction)
    return "\n".join(lines)


def initial_messages(
    question: str, options: list[str] | tuple[str, ...] = (), config: ProtocolConfig = DEFAULT_CONFIG
) -> list[dict]:
    """Hugging Face chat messages: system text, then a user turn holding the image and the question."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(config)}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_prompt(question, options, config)}]},
    ]


def observation_message(config: ProtocolConfig = DEFAULT_CONFIG, error: str | None = None) -> dict:
    """The message carrying a tool result.

    Success: ``<tool_response>``, the image, ``</tool_response>`` and the instruction.
    With ``error``: text only, ``<tool_response>Error: ...</tool_response>`` (no image).
    """
    open_, close_ = f"<{config.response_tag}>", f"</{config.response_tag}>"
    if error is not None:
        return {"role": config.observation_role, "content": [{"type": "text", "text": f"{open_}Error: {error}{close_}"}]}
    return {
        "role": config.observation_role,
        "content": [
            {"type": "text", "text": open_},
            {"type": "image"},
            {"type": "text", "text": f"{close_}\n{config.observation_instruction}"},
        ],
    }


