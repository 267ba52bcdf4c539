"""The agent protocol: prompts, the tag grammar, the parser of model output, observations.

One assistant turn is free text containing tagged blocks::

    <description>what the last view shows</description>   (required after an observation)
    <think>reasoning</think>
    <tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2], "label": "..."}}</tool_call>
      or
    <answer>B</answer>

An observation (the tool's result) is a ``user`` (or ``tool``) message
``<tool_response><image></tool_response>`` followed by a short instruction to
describe the view first. A rejected call gets a text-only
``<tool_response>Error: ...</tool_response>``.

:func:`parse_turn` never raises: every problem becomes an entry in
``Turn.errors`` of the form ``"<code>: <sentence>"`` (codes listed in
:data:`ERROR_CODES`), and whatever can be extracted is extracted.

Where we depart from or guess at the paper (arXiv 2604.06777): the paper's exact
tag syntax is not public. We use DeepEyes' ``<think>``/``<tool_call>``/``<answer>``
grammar and JSON schema, and add MAPO's mandated description as a
``<description>`` block that opens every turn following an observation. All tag
names, the tool name and the texts are config values. The description length
limit (:attr:`ProtocolConfig.max_description_chars`) is our guard against
verifier hacking; the parser flags, the reward/verifier penalises.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mapo.config import knob

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

MAX_ABS_COORDINATE = 1e6  # larger |values| are nonsense, whatever the image size

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


DEFAULT_CONFIG = ProtocolConfig()


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call.

    ``bbox`` is ``(x1, y1, x2, y2)`` in view pixels, finite, exactly as the model
    wrote it (not clamped: :func:`mapo.tools.validate_box` does that), or ``None``
    when the call could not be read; ``raw`` is the text inside the tags.
    """

    name: str
    bbox: tuple[float, float, float, float] | None
    label: str | None
    raw: str


@dataclass(frozen=True)
class Turn:
    """One parsed assistant turn; block texts are stripped, ``None`` when absent."""

    think: str | None
    description: str | None
    tool_call: ToolCall | None
    answer: str | None
    errors: tuple[str, ...]

    @property
    def action(self) -> str:
        """``"answer"`` if there is an answer (it wins over a tool call), else ``"tool_call"`` if any, else ``"none"``."""
        if self.answer is not None:
            return "answer"
        if self.tool_call is not None:
            return "tool_call"
        return "none"

    @property
    def error_codes(self) -> tuple[str, ...]:
        """The code of each error (the part before the first colon)."""
        return tuple(e.split(":", 1)[0] for e in self.errors)


# ----------------------------------------------------------------------------- parsing


def _tag_pattern(config: ProtocolConfig) -> re.Pattern[str]:
    names = (config.think_tag, config.description_tag, config.tool_call_tag, config.answer_tag)
    # An alternation of literals after a fixed '<': the regex engine never backtracks
    # more than one tag length, so scanning is linear in the text length.
    return re.compile("<(/?)(" + "|".join(re.escape(n) for n in names) + ")>")


_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _pattern_for(config: ProtocolConfig) -> re.Pattern[str]:
    key = (config.think_tag, config.description_tag, config.tool_call_tag, config.answer_tag)
    if key not in _PATTERNS:
        _PATTERNS[key] = _tag_pattern(config)
    return _PATTERNS[key]


def _scan_blocks(text: str, config: ProtocolConfig, errors: list[str]) -> tuple[dict[str, list[str]], int | None, int]:
    """Split ``text`` into tagged blocks, best effort.

    Returns (tag -> contents in order, start offset of the first description block
    or None, start offset of the first tag of any kind or -1). Nesting is not part
    of the grammar: an opening tag inside an open block closes that block there.
    """
    blocks: dict[str, list[str]] = {}
    open_tag: str | None = None
    content_start = 0
    first_description: int | None = None
    first_tag = -1

    def close(tag: str, end: int) -> None:
        blocks.setdefault(tag, []).append(text[content_start:end])

    for m in _pattern_for(config).finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if first_tag < 0:
            first_tag = m.start()
        if not closing:
            if open_tag is not None:
                errors.append(f"nested_tag: <{tag}> opened inside <{open_tag}>; <{open_tag}> was closed there")
                close(open_tag, m.start())
            if tag == config.description_tag and first_description is None:
                first_description = m.start()
            open_tag, content_start = tag, m.end()
        elif open_tag == tag:
            close(tag, m.start())
            open_tag = None
        elif open_tag is not None:
            errors.append(f"nested_tag: </{tag}> found while <{open_tag}> was open; <{open_tag}> was closed there")
            close(open_tag, m.start())
            open_tag = None
        else:
            errors.append(f"stray_closing_tag: </{tag}> has no matching <{tag}>")
    if open_tag is not None:
        errors.append(f"unclosed_tag: <{open_tag}> is never closed; its text runs to the end of the turn")
        close(open_tag, len(text))
    return blocks, first_description, first_tag


def _strip_fences(body: str) -> str:
    """Remove a Markdown code fence (```json ... ```) around a tool call body."""
    body = body.strip()
    if body.startswith("```"):
        newline = body.find("\n")
        body = body[newline + 1 :] if newline >= 0 else body[3:]
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
    return body.strip()


def _decode_json_object(body: str) -> tuple[Any, str | None]:
    """The first JSON value starting at the first '{' of ``body``, tolerating junk around it."""
    start = body.find("{")
    if start < 0:
        return None, "tool_call_json: no JSON object (no '{') inside the tool call"
    try:
        value, _ = json.JSONDecoder().raw_decode(body, start)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        return None, f"tool_call_json: the tool call is not valid JSON ({_short(str(exc))})"
    if not isinstance(value, dict):
        return None, "tool_call_json: the tool call must be a JSON object"
    return value, None


def _short(message: str, limit: int = 120) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)  # NumPy numbers too, for render_tool_call


def _read_bbox(value: Any) -> tuple[tuple[float, float, float, float] | None, str | None]:
    if not isinstance(value, list) or len(value) != 4:
        n = len(value) if isinstance(value, list) else type(value).__name__
        return None, f"tool_call_schema: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {_short(repr(n))}"
    if not all(_is_number(v) for v in value):
        return None, f"tool_call_schema: bbox_2d must hold only numbers, got {_short(repr(value))}"
    try:
        coords = tuple(float(v) for v in value)
    except OverflowError:  # an integer too large for a float
        return None, f"tool_call_schema: bbox_2d values must be within ±{MAX_ABS_COORDINATE:g}"
    if not all(math.isfinite(v) for v in coords):
        return None, f"tool_call_schema: bbox_2d values must be finite, got {_short(repr(value))}"
    if any(abs(v) > MAX_ABS_COORDINATE for v in coords):
        return None, f"tool_call_schema: bbox_2d values must be within ±{MAX_ABS_COORDINATE:g}, got {_short(repr(value))}"
    return coords, None  # type: ignore[return-value]


def _parse_tool_call(raw: str, config: ProtocolConfig, errors: list[str]) -> ToolCall:
    obj, error = _decode_json_object(_strip_fences(raw))
    if error is not None:
        errors.append(error)
        return ToolCall(name="", bbox=None, label=None, raw=raw)
    name = obj.get("name")
    name = name if isinstance(name, str) else ""
    if name != config.tool_name:
        errors.append(f"tool_call_schema: unknown tool name {_short(repr(obj.get('name')))}; expected {config.tool_name!r}")
    arguments = obj.get("arguments")
    if isinstance(arguments, str):  # some chat templates serialise arguments as a JSON string
        arguments, _ = _decode_json_object(arguments)
    if not isinstance(arguments, dict):
        errors.append('tool_call_schema: "arguments" must be an object with "bbox_2d"')
        return ToolCall(name=name, bbox=None, label=None, raw=raw)
    extra = sorted(set(arguments) - {"bbox_2d", "label"})
    if extra:
        errors.append(f"tool_call_schema: unexpected argument(s) {_short(', '.join(map(str, extra)))}")
    bbox = None
    if "bbox_2d" not in arguments:
        errors.append('tool_call_schema: "arguments" has no "bbox_2d"')
    else:
        bbox, error = _read_bbox(arguments["bbox_2d"])
        if error is not None:
            errors.append(error)
    label = arguments.get("label")
    if label is not None and not isinstance(label, str):
        errors.append(f"tool_call_schema: label must be a string, got {type(label).__name__}")
        label = None
    if name != config.tool_name:
        bbox = None  # a call to an unknown tool is not executed
    return ToolCall(name=name, bbox=bbox, label=label, raw=raw)


def _first(blocks: dict[str, list[str]], tag: str, errors: list[str]) -> str | None:
    found = blocks.get(tag)
    if not found:
        return None
    if len(found) > 1:
        errors.append(f"multiple_blocks: <{tag}> appears {len(found)} times; the first is used")
    return found[0]


def parse_turn(text: str, config: ProtocolConfig = DEFAULT_CONFIG) -> Turn:
    """Parse one assistant turn. Never raises; problems are listed in ``Turn.errors``.

    Runs in time linear in ``len(text)`` (a single regex scan for tags, then
    ``json`` on the first tool call body).
    """
    if not isinstance(text, str):
        return Turn(None, None, None, None, (f"no_action: expected text, got {type(text).__name__}",))
    errors: list[str] = []
    blocks, first_description, first_tag = _scan_blocks(text, config, errors)

    think = _first(blocks, config.think_tag, errors)
    description = _first(blocks, config.description_tag, errors)
    answer = _first(blocks, config.answer_tag, errors)
    raw_call = _first(blocks, config.tool_call_tag, errors)

    think = think.strip() if think is not None else None
    if description is not None:
        description = description.strip()
        if first_description is not None and (first_description != first_tag or text[:first_tag].strip()):
            errors.append(f"description_not_first: <{config.description_tag}> must open the turn")
        if not description:
            errors.append(f"empty_block: <{config.description_tag}> is empty")
            description = None
        elif len(description) > config.max_description_chars:
            errors.append(
                f"description_too_long: {len(description)} characters, limit {config.max_description_chars}"
            )
    if answer is not None:
        answer = answer.strip()
        if not answer:
            errors.append(f"empty_block: <{config.answer_tag}> is empty")
            answer = None

    tool_call = _parse_tool_call(raw_call, config, errors) if raw_call is not None else None
    if tool_call is not None and answer is not None:
        errors.append("answer_and_tool_call: the turn has both an answer and a tool call; the answer wins")
    if tool_call is None and answer is None:
        errors.append(f"no_action: neither <{config.tool_call_tag}> nor <{config.answer_tag}> found")
    if len(errors) > MAX_ERRORS:
        errors = errors[: MAX_ERRORS - 1] + [f"too_many_errors: {len(errors) - MAX_ERRORS + 1} more errors were dropped"]
    return Turn(think=think, description=description, tool_call=tool_call, answer=answer, errors=tuple(errors))


# ----------------------------------------------------------------------------- rendering


def _format_number(v: float) -> str:
    """Integral values as ints ("12", not "12.0"); others with the shortest exact repr."""
    if isinstance(v, bool) or not _is_number(v) or not math.isfinite(v):
        raise ValueError(f"bbox values must be finite numbers, got {v!r}")
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def render_tool_call(bbox: Any, label: str | None = None, config: ProtocolConfig = DEFAULT_CONFIG) -> str:
    """The tool call text: ``<tool_call>{"name": ..., "arguments": {"bbox_2d": [..], "label": ...}}</tool_call>``.

    ``bbox`` is ``(x1, y1, x2, y2)`` in view pixels; ``label`` is omitted when None.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"bbox must be a sequence of 4 numbers (x1, y1, x2, y2), got {bbox!r}")
    if label is not None and not isinstance(label, str):
        raise ValueError(f"label must be a string or None, got {type(label).__name__}")
    coords = "[" + ", ".join(_format_number(v) for v in bbox) + "]"
    arguments = '{"bbox_2d": ' + coords
    if label is not None:
        # Escape '<' so a label can never close or open a tag of the grammar.
        arguments += ", " + '"label": ' + json.dumps(label, ensure_ascii=False).replace("<", "\\u003c")
    arguments += "}"
    body = '{"name": ' + json.dumps(config.tool_name) + ', "arguments": ' + arguments + "}"
    return f"<{config.tool_call_tag}>{body}</{config.tool_call_tag}>"


def render_assistant_turn(
    *,
    think: str | None = None,
    description: str | None = None,
    bbox: Any = None,
    label: str | None = None,
    answer: str | None = None,
    config: ProtocolConfig = DEFAULT_CONFIG,
) -> str:
    """An assistant turn in canonical order: description, think, then the tool call or the answer."""
    if bbox is not None and answer is not None:
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
    """The system prompt: the tool, its JSON schema, the tag grammar and the description rule."""
    return _render_system(config)


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


__all__ = [
    "DEFAULT_CONFIG",
    "ERROR_CODES",
    "ProtocolConfig",
    "ToolCall",
    "Turn",
    "initial_messages",
    "observation_message",
    "protocol_for_policy",
    "option_letters",
    "parse_turn",
    "render_assistant_turn",
    "render_tool_call",
    "system_prompt",
    "user_prompt",
]
