"""Tools the agent calls: a registry of :class:`~mapo.agent.tools.base.Tool` objects and the one entry point that runs a call.

- :mod:`mapo.agent.tools.geometry`: smart-resize, the pixel budgets (:class:`ToolConfig`),
  the view<->original mapping, IoU (shared by every tool).
- :mod:`mapo.agent.tools.base`: the interface (:class:`Tool`, :class:`ToolCall`, :class:`ToolResult`).
- :mod:`mapo.agent.tools.zoom`: ``image_zoom_in_tool``, always offered.
- :mod:`mapo.agent.tools.rotate`: ``image_rotate_tool``, offered when
  ``ProtocolConfig.extra_tools`` names it.

Adding a tool: a module with a :class:`Tool` subclass, one line in :data:`TOOLS`
below, and its tests. The parser, the episode, records, eval and the report take it
from there.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mapo.agent.tools.base import Tool, ToolCall, ToolResult
from mapo.agent.tools.geometry import (
    DEFAULT_TOOL_CONFIG,
    QWEN_MAX_ASPECT,
    Box,
    ToolConfig,
    box_iou,
    crop_view_size,
    original_to_view,
    smart_resize,
    view_size,
    view_to_original,
    with_factor,
)
from mapo.agent.tools.rotate import RotateArgs, RotateTool
from mapo.agent.tools.zoom import ZoomArgs, ZoomInTool, ZoomResult, validate_box, zoom_in

# The registry: name -> tool. Zoom-in comes first; it is the tool the prompts are written around.
TOOLS: dict[str, Tool] = {tool.name: tool for tool in (ZoomInTool(), RotateTool())}
ZOOM_TOOL = ZoomInTool.name


def get_tool(name: str) -> Tool:
    """The registered tool called ``name``; ValueError naming the registered ones otherwise."""
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; registered tools: {', '.join(TOOLS)}")
    return TOOLS[name]


def tool_of(args: Any) -> Tool:
    """The tool whose typed arguments ``args`` are."""
    for tool in TOOLS.values():
        if isinstance(args, tool.args_type):
            return tool
    raise ValueError(f"{type(args).__name__} are not the arguments of a registered tool ({', '.join(TOOLS)})")


def run_tool(
    call: ToolCall, image: Image.Image, view_wh: tuple[int, int] | None, config: ToolConfig = DEFAULT_TOOL_CONFIG
) -> ToolResult:
    """Run one parsed call on the original ``image`` that the model sees at ``view_wh``.

    A call the parser could not turn into arguments (``call.args is None``: bad JSON,
    unknown or disabled tool, bad arguments) returns its parse error
    (``call.error``); a tool that rejects its arguments returns an error too. Raises
    ValueError only for a bad ``image`` or ``view_wh``.
    """
    if call.args is None:
        return ToolResult("", None, call.error or "the tool call could not be read")
    return tool_of(call.args).run(call.args, image, view_wh, config)


def args_json(args: Any) -> dict[str, Any] | None:
    """The typed arguments of a call as plain JSON data (None stays None), as records store them."""
    return None if args is None else tool_of(args).args_json(args)


__all__ = [
    "Box",
    "DEFAULT_TOOL_CONFIG",
    "QWEN_MAX_ASPECT",
    "RotateArgs",
    "RotateTool",
    "TOOLS",
    "Tool",
    "ToolCall",
    "ToolConfig",
    "ToolResult",
    "ZOOM_TOOL",
    "ZoomArgs",
    "ZoomInTool",
    "ZoomResult",
    "args_json",
    "box_iou",
    "crop_view_size",
    "get_tool",
    "original_to_view",
    "run_tool",
    "smart_resize",
    "tool_of",
    "validate_box",
    "view_size",
    "view_to_original",
    "with_factor",
    "zoom_in",
]
