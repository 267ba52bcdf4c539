"""The rotate tool (``image_rotate_tool``, off by default): see the whole image turned by 90, 180 or 270 degrees.

A small second tool that shows the tool interface carries more than zoom-in:
enable it with ``protocol.extra_tools=[image_rotate_tool]``. The observation is
the *original* image rotated counter-clockwise (an exact pixel transpose, no
interpolation), resized to the observation pixel budget like a zoom-in crop.
The model writes ``{"angle": 90}``; any other angle is a schema error.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mapo.agent.tools.base import CallSyntax, Tool, ToolResult, cut, short
from mapo.agent.tools.geometry import ToolConfig, crop_view_size

ANGLES = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class RotateArgs:
    """``angle``: degrees counter-clockwise, one of 90, 180, 270."""

    angle: int


class RotateTool(Tool):
    """Rotate the whole original image and show it at the observation budget."""

    name = "image_rotate_tool"
    required = ("angle",)
    args_type = RotateArgs

    def read_args(self, arguments: dict[str, Any], errors: list[str]) -> RotateArgs | None:
        extra = sorted(set(arguments) - {"angle", "label"})
        if extra:
            errors.append(f"tool_call_schema: unexpected argument(s) {cut(', '.join(map(str, extra)))}")
        if "angle" not in arguments:
            errors.append('tool_call_schema: "arguments" has no "angle"')
            return None
        angle = arguments["angle"]
        ok = isinstance(angle, numbers.Real) and not isinstance(angle, bool) and angle in ANGLES
        if not ok:
            errors.append(f"tool_call_schema: angle must be 90, 180 or 270 (degrees counter-clockwise), got {short(angle)}")
            return None
        return RotateArgs(int(angle))

    def run(self, args: RotateArgs, image: Image.Image, view_wh: tuple[int, int] | None, config: ToolConfig) -> ToolResult:
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
        w, h = image.size
        if w < 1 or h < 1 or w * h > config.max_image_pixels:
            raise ValueError(f"image size {w}x{h} is outside (0, max_image_pixels={config.max_image_pixels}] pixels")
        turned = image.transpose(ANGLES[args.angle])
        if turned.mode != "RGB":
            turned = turned.convert("RGB")
        target = crop_view_size(turned.size, config)
        if target != turned.size:
            turned = turned.resize(target, Image.Resampling.BICUBIC)
        return ToolResult(self.name, turned, None)

    def args_json(self, args: RotateArgs) -> dict[str, Any]:
        return {"angle": args.angle}

    def render_arguments(self, args: RotateArgs) -> str:
        if args.angle not in ANGLES:
            raise ValueError(f"angle must be 90, 180 or 270, got {args.angle!r}")
        return '{"angle": ' + str(args.angle) + "}"

    def describe(self, call_name: str, protocol: CallSyntax) -> str:
        return (
            f"# Tool\n{call_name}: see the whole image rotated counter-clockwise.\n"
            'Arguments (JSON): {"angle": 90} (90, 180 or 270 degrees)\n'
            f'Call it as <{protocol.tool_call_tag}>{{"name": "{call_name}", "arguments": {{"angle": 90}}}}'
            f"</{protocol.tool_call_tag}>; the rotated image comes back like a zoomed view."
        )
