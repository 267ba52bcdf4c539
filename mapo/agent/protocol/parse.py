"""The parser of model output: one assistant turn -> :class:`Turn` (never raises; problems are listed)."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from mapo.agent.protocol.config import DEFAULT_CONFIG, MAX_ERRORS, ProtocolConfig, enabled_tools
from mapo.agent.tools.base import ToolCall, cut, short


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
        return None, f"tool_call_json: the tool call is not valid JSON ({cut(str(exc))})"
    if not isinstance(value, dict):
        return None, "tool_call_json: the tool call must be a JSON object"
    return value, None


def _parse_tool_call(raw: str, config: ProtocolConfig, errors: list[str]) -> ToolCall:
    """The call in ``raw`` with its tool's typed arguments (``args`` None when it cannot run).

    A name that is not an enabled tool's is an error; its arguments are still read with
    the zoom-in tool's schema so their problems are reported too, and it is never run.
    """
    obj, error = _decode_json_object(_strip_fences(raw))
    if error is not None:
        errors.append(error)
        return ToolCall(name="", args=None, raw=raw)
    name = obj.get("name")
    name = name if isinstance(name, str) else ""
    tools = {tool.call_name(config): tool for tool in enabled_tools(config)}
    tool = tools.get(name)
    if tool is None:
        expected = " or ".join(repr(n) for n in tools)
        errors.append(f"tool_call_schema: unknown tool name {short(obj.get('name'))}; expected {expected}")
    reader = tool or next(iter(tools.values()))
    arguments = obj.get("arguments")
    if isinstance(arguments, str):  # some chat templates serialise arguments as a JSON string
        arguments, _ = _decode_json_object(arguments)
    if not isinstance(arguments, dict):
        wanted = ", ".join(f'"{k}"' for k in reader.required)
        errors.append(f'tool_call_schema: "arguments" must be an object with {wanted}')
        return ToolCall(name=name, args=None, raw=raw)
    args = reader.read_args(arguments, errors)
    return ToolCall(name=name, args=args if tool is not None else None, raw=raw, arguments=arguments)


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
    if tool_call is not None and tool_call.args is None:
        # What the error observation says: the first tool-call error left after the cap.
        reason = next((e for e in errors if e.startswith("tool_call_")), None)
        tool_call = dataclasses.replace(tool_call, error=reason)
    return Turn(think=think, description=description, tool_call=tool_call, answer=answer, errors=tuple(errors))


