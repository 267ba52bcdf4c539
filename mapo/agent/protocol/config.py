"""The protocol's settings: tag names, the tool set, the prompt texts, and the error codes of the parser."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Literal

from mapo.agent.tools import TOOLS, ZOOM_TOOL, get_tool
from mapo.core.config import knob

# Error codes that can appear as the prefix of a Turn.errors entry ("code: sentence").
ERROR_CODES = (
    "no_action",  # neither a tool call nor an answer
    "answer_and_tool_call",  # both present; the answer wins (Turn.action == "answer")
    "multiple_blocks",  # a tag appears more than once; the first block is used
    "nested_tag",  # a tag opened inside another block
    "unclosed_tag",  # a block never closed; its content runs to the next tag or the end
    "stray_closing_tag",  # a closing tag with no matching opening tag
    "empty_block",  # <answer></answer> or <description></description> with no text
    "description_not_first",  # text or tags before <description>
    "description_too_long",  # longer than max_description_chars (kept, but flagged)
    "tool_call_json",  # the tool call body is not a JSON object
    "tool_call_schema",  # valid JSON, wrong schema (name, arguments, bbox_2d, label)
    "too_many_errors",  # the last entry when errors beyond MAX_ERRORS were dropped
)
MAX_ERRORS = 16  # garbage such as "<think>" * 10**5 must not produce 10**5 error strings

DEFAULT_SYSTEM_TEMPLATE = """You are a helpful assistant that answers questions about an image. You can zoom in on the image with a tool.

# Tool
$tool_name: crop a region of the image and see it at higher resolution.
Arguments (JSON): {"bbox_2d": [x1, y1, x2, y2], "label": "<what you expect to see>"}
bbox_2d is in pixels of the image as you see it; (x1, y1) is the top-left corner, (x2, y2) the bottom-right.

# Format
Each turn: optionally <$think>your reasoning</$think>, then exactly one of
<$tool_call>{"name": "$tool_name", "arguments": {"bbox_2d": [x1, y1, x2, y2], "label": "..."}}</$tool_call>
or <$answer>your final answer</$answer>.
The zoomed view comes back as an image inside <$response></$response>. Every turn after a view must open with <$description>what the view shows</$description> (at most $max_description_chars characters)."""

DEFAULT_OBSERVATION_INSTRUCTION = (
    "Describe this view in <description></description> first, then continue: zoom in again or answer."
)

DEFAULT_ANSWER_INSTRUCTION = "Zoom in if it helps. Give the final answer as the option's letter in <answer></answer>."

_TEMPLATE_FIELDS = ("think", "tool_call", "description", "answer", "tool_name", "response", "max_description_chars")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")


def _render_system(config: "ProtocolConfig") -> str:
    return string.Template(config.system_template).substitute(
        think=config.think_tag,
        tool_call=config.tool_call_tag,
        description=config.description_tag,
        answer=config.answer_tag,
        tool_name=config.tool_name,
        response=config.response_tag,
        max_description_chars=config.max_description_chars,
    )


@dataclass(frozen=True)
class ProtocolConfig:
    """Tag names, tool name and prompt texts of the agent protocol."""

    think_tag: str = knob("think", "tag around free reasoning")
    tool_call_tag: str = knob("tool_call", "tag around the JSON tool call")
    description_tag: str = knob("description", "tag around the description of the last view (MAPO)")
    answer_tag: str = knob("answer", "tag around the final answer")
    tool_name: str = knob("image_zoom_in_tool", "the zoom-in tool's name in the JSON call")
    extra_tools: tuple[str, ...] = knob(
        (), "tools offered besides zoom-in (names in mapo.agent.tools.TOOLS, e.g. image_rotate_tool); each appends its "
        "section to the system prompt. Zoom-in is always offered: the prompts are written around it"
    )
    observation_role: Literal["user", "tool"] = knob("user", "chat role of observation messages: user or tool")
    response_tag: str = knob("tool_response", "tag around the returned view in observations")
    observation_instruction: str = knob(DEFAULT_OBSERVATION_INSTRUCTION, "text after each returned view")
    answer_instruction: str = knob(DEFAULT_ANSWER_INSTRUCTION, "text after the question and options")
    max_description_chars: int = knob(300, "longer descriptions are kept but flagged description_too_long")
    system_template: str = knob(
        DEFAULT_SYSTEM_TEMPLATE,
        "system prompt; $think $tool_call $description $answer $tool_name $response $max_description_chars "
        "are replaced by the config values",
    )

    def __post_init__(self) -> None:
        tags = {
            "think_tag": self.think_tag,
            "tool_call_tag": self.tool_call_tag,
            "description_tag": self.description_tag,
            "answer_tag": self.answer_tag,
            "response_tag": self.response_tag,
        }
        for key, value in tags.items():
            if not isinstance(value, str) or not _TAG_NAME.fullmatch(value):
                raise ValueError(
                    f"{key} must be a tag name (a letter, then letters, digits, '_' or '-'), got {value!r}"
                )
        if len(set(tags.values())) != len(tags):
            raise ValueError(f"tag names must be distinct so the parser can tell blocks apart, got {tags}")
        if not self.tool_name or not isinstance(self.tool_name, str):
            raise ValueError(f"tool_name must be a non-empty string, got {self.tool_name!r}")
        _check_extra_tools(self)
        if self.observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', got {self.observation_role!r}")
        if isinstance(self.max_description_chars, bool) or not isinstance(self.max_description_chars, int) or (
            self.max_description_chars < 1
        ):
            raise ValueError(f"max_description_chars must be a positive integer, got {self.max_description_chars!r}")
        try:
            _render_system(self)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"system_template has an unknown or malformed $placeholder ({exc}); "
                f"allowed: {', '.join('$' + f for f in _TEMPLATE_FIELDS)} (write $$ for a literal $)"
            ) from None


def _check_extra_tools(config: ProtocolConfig) -> None:
    extra = config.extra_tools
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)) or not all(isinstance(n, str) for n in extra):
        raise ValueError(f"extra_tools must be a list of tool names, got {extra!r}")
    object.__setattr__(config, "extra_tools", tuple(extra))  # a list from Python code; frozen configs hold tuples
    for name in extra:
        if name == ZOOM_TOOL:
            raise ValueError(f"extra_tools: {ZOOM_TOOL} is always offered; list only the other tools")
        try:
            get_tool(name)
        except ValueError as err:
            raise ValueError(f"extra_tools: {err}") from None
    names = [tool.call_name(config) for tool in enabled_tools(config)]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names in calls must be distinct so calls can be told apart, got {names}")


def enabled_tools(config: ProtocolConfig) -> list[Any]:
    """The tools a policy prompted with ``config`` may call (``mapo.agent.tools.Tool``): zoom-in, then ``extra_tools``."""
    return [TOOLS[ZOOM_TOOL]] + [TOOLS[name] for name in config.extra_tools]


DEFAULT_CONFIG = ProtocolConfig()


