"""The zoom-in tool (``image_zoom_in_tool``): box validation, the crop, and its call arguments.

The model writes ``{"bbox_2d": [x1, y1, x2, y2], "label": "..."}`` in view pixels.
The tool maps the box to original pixels with :func:`~mapo.agent.tools.geometry.view_to_original`,
crops the *original* image (that is what makes zooming reveal detail) and resizes the
crop to the observation pixel budget with :func:`~mapo.agent.tools.geometry.smart_resize`.
Its name in calls is :attr:`mapo.agent.protocol.ProtocolConfig.tool_name`, and the system
template describes it (the prompts are written around zooming in).

Where we depart from or guess at the paper and DeepEyes:

- DeepEyes crops the original with view coordinates and, on HR-Bench, never
  applies its scale map; we always map through ``view_to_original``.
- DeepEyes, for a box with a side under 28 px, scales the whole box up keeping
  its aspect ratio; we expand each short side independently to
  ``min_box_side`` around the box centre and shift it back inside the image
  (the crop stays on what the model pointed at). The aspect-ratio check
  (``max_aspect``, DeepEyes: 100) runs on the clamped box before expansion,
  as in DeepEyes.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mapo.agent.tools.base import CallSyntax, Tool, ToolResult, cut, short
from mapo.agent.tools.geometry import (
    DEFAULT_TOOL_CONFIG,
    QWEN_MAX_ASPECT,
    Box,
    ToolConfig,
    _check_box,
    _check_size,
    crop_view_size,
    view_size,
    view_to_original,
)

MAX_ABS_COORDINATE = 1e6  # larger |values| are nonsense, whatever the image size


def _expand_side(lo: float, hi: float, min_side: float, limit: float) -> tuple[float, float]:
    """Grow [lo, hi] to ``min_side`` (at most ``limit``) around its centre, then shift it inside [0, limit]."""
    side = min(min_side, limit)
    if hi - lo >= side:
        return lo, hi
    centre = (lo + hi) / 2
    lo, hi = centre - side / 2, centre + side / 2
    if lo < 0:
        lo, hi = 0.0, side
    elif hi > limit:
        lo, hi = limit - side, limit
    return lo, hi


def validate_box(box: Any, view_wh: tuple[int, int], config: ToolConfig = DEFAULT_TOOL_CONFIG) -> tuple[Box | None, str | None]:
    """Clamp, expand and check a model box in view pixels.

    Returns ``(box, None)`` with the usable box in view pixels, or
    ``(None, message)`` with a sentence the model can read in an error
    observation. Raises ValueError only for a bad ``view_wh``.
    """
    vw, vh = _check_size(view_wh, "view_wh")
    try:
        x1, y1, x2, y2 = _check_box(box, "bbox_2d")
    except ValueError as exc:
        return None, str(exc)
    if x2 <= x1 or y2 <= y1:
        return None, f"bbox_2d [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is empty: it needs x2 > x1 and y2 > y1"
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(vw)), min(y2, float(vh))
    if cx2 <= cx1 or cy2 <= cy1:
        return None, f"bbox_2d [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the image (width {vw}, height {vh})"
    w, h = cx2 - cx1, cy2 - cy1
    if max(w, h) / min(w, h) > config.max_aspect:
        return None, (
            f"bbox_2d [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is too elongated: aspect ratio {max(w, h) / min(w, h):.0f} "
            f"exceeds {config.max_aspect:g}"
        )
    cx1, cx2 = _expand_side(cx1, cx2, config.min_box_side, float(vw))
    cy1, cy2 = _expand_side(cy1, cy2, config.min_box_side, float(vh))
    return (cx1, cy1, cx2, cy2), None


@dataclass(frozen=True)
class ZoomResult:
    """The outcome of one zoom-in: a crop (resized to the observation budget) or an error."""

    crop: Image.Image | None
    error: str | None
    box_view: Box | None  # the validated box, view pixels
    box_original: Box | None  # the same box, original pixels (before rounding to whole pixels)


def _pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Whole-pixel box covering ``box``, inside the image, at least one pixel each way."""
    # Snap float noise (4399.9999999 from a view->original round trip) so it does not add a pixel row.
    box = tuple(round(v) if abs(v - round(v)) < 1e-6 else v for v in box)  # type: ignore[assignment]
    left = min(max(math.floor(box[0]), 0), width - 1)
    top = min(max(math.floor(box[1]), 0), height - 1)
    right = max(min(math.ceil(box[2]), width), left + 1)
    bottom = max(min(math.ceil(box[3]), height), top + 1)
    return left, top, right, bottom


def zoom_in(
    image: Image.Image, bbox: Any, view_wh: tuple[int, int] | None = None, config: ToolConfig = DEFAULT_TOOL_CONFIG
) -> ZoomResult:
    """Crop the original ``image`` at ``bbox`` (view pixels) and resize it to the observation budget.

    ``view_wh`` defaults to :func:`view_size` of the image. A bad box returns a
    ``ZoomResult`` with ``error`` set; a bad ``image`` or ``view_wh`` raises ValueError.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    ow, oh = image.size
    if ow < 1 or oh < 1 or ow * oh > config.max_image_pixels:
        raise ValueError(f"image size {ow}x{oh} is outside (0, max_image_pixels={config.max_image_pixels}] pixels")
    view_wh = view_size((ow, oh), config) if view_wh is None else _check_size(view_wh, "view_wh")
    box_view, error = validate_box(bbox, view_wh, config)
    if error is not None:
        return ZoomResult(crop=None, error=error, box_view=None, box_original=None)
    box_original = view_to_original(box_view, view_wh, (ow, oh))
    left, top, right, bottom = _pixel_box(box_original, ow, oh)
    crop_w, crop_h = right - left, bottom - top
    if max(crop_w, crop_h) / min(crop_w, crop_h) > QWEN_MAX_ASPECT:
        # Only reachable with a view_wh whose aspect differs wildly from the image's.
        return ZoomResult(None, f"the crop ({crop_w}x{crop_h} pixels) is too elongated to show", None, None)
    crop = image.crop((left, top, right, bottom))
    if crop.mode != "RGB":
        crop = crop.convert("RGB")
    target = crop_view_size((crop_w, crop_h), config)
    if target != crop.size:
        crop = crop.resize(target, Image.Resampling.BICUBIC)
    return ZoomResult(crop=crop, error=None, box_view=box_view, box_original=box_original)




# ----------------------------------------------------------------------------- the tool


@dataclass(frozen=True)
class ZoomArgs:
    """``bbox``: ``(x1, y1, x2, y2)`` in view pixels, finite, as the model wrote it (not clamped:
    :func:`validate_box` does that); ``label``: what the model expects to see, or None."""

    bbox: Box
    label: str | None = None


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)  # NumPy numbers too, for render_arguments


def _read_bbox(value: Any) -> tuple[Box | None, str | None]:
    if not isinstance(value, list) or len(value) != 4:
        n = len(value) if isinstance(value, list) else type(value).__name__
        return None, f"tool_call_schema: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {short(n)}"
    if not all(_is_number(v) for v in value):
        return None, f"tool_call_schema: bbox_2d must hold only numbers, got {short(value)}"
    try:
        coords = tuple(float(v) for v in value)
    except OverflowError:  # an integer too large for a float
        return None, f"tool_call_schema: bbox_2d values must be within ±{MAX_ABS_COORDINATE:g}"
    if not all(math.isfinite(v) for v in coords):
        return None, f"tool_call_schema: bbox_2d values must be finite, got {short(value)}"
    if any(abs(v) > MAX_ABS_COORDINATE for v in coords):
        return None, f"tool_call_schema: bbox_2d values must be within ±{MAX_ABS_COORDINATE:g}, got {short(value)}"
    return coords, None  # type: ignore[return-value]


def _format_number(v: float) -> str:
    """Integral values as ints ("12", not "12.0"); others with the shortest exact repr."""
    if isinstance(v, bool) or not _is_number(v) or not math.isfinite(v):
        raise ValueError(f"bbox values must be finite numbers, got {v!r}")
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


class ZoomInTool(Tool):
    """Crop a region of the original image (``bbox_2d`` in view pixels) and show it at the observation budget."""

    name = "image_zoom_in_tool"
    required = ("bbox_2d",)
    args_type = ZoomArgs

    def call_name(self, protocol: CallSyntax) -> str:
        return protocol.tool_name

    def read_args(self, arguments: dict[str, Any], errors: list[str]) -> ZoomArgs | None:
        extra = sorted(set(arguments) - {"bbox_2d", "label"})
        if extra:
            errors.append(f"tool_call_schema: unexpected argument(s) {cut(', '.join(map(str, extra)))}")
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
        return None if bbox is None else ZoomArgs(bbox, label)

    def run(self, args: ZoomArgs, image: Image.Image, view_wh: tuple[int, int] | None, config: ToolConfig) -> ToolResult:
        result = zoom_in(image, args.bbox, view_wh, config)
        return ToolResult(self.name, result.crop, result.error, result.box_view, result.box_original)

    def args_json(self, args: ZoomArgs) -> dict[str, Any]:
        return {"bbox_2d": [float(v) for v in args.bbox], "label": args.label}

    def render_arguments(self, args: ZoomArgs) -> str:
        bbox, label = args.bbox, args.label
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"bbox must be a sequence of 4 numbers (x1, y1, x2, y2), got {bbox!r}")
        if label is not None and not isinstance(label, str):
            raise ValueError(f"label must be a string or None, got {type(label).__name__}")
        arguments = '{"bbox_2d": [' + ", ".join(_format_number(v) for v in bbox) + "]"
        if label is not None:
            # Escape '<' so a label can never close or open a tag of the grammar.
            arguments += ', "label": ' + json.dumps(label, ensure_ascii=False).replace("<", "\\u003c")
        return arguments + "}"

    def describe(self, call_name: str, protocol: CallSyntax) -> str:
        # The system template describes zooming in (DEFAULT_SYSTEM_TEMPLATE); this section is its "# Tool" part.
        return (
            f"# Tool\n{call_name}: crop a region of the image and see it at higher resolution.\n"
            'Arguments (JSON): {"bbox_2d": [x1, y1, x2, y2], "label": "<what you expect to see>"}\n'
            "bbox_2d is in pixels of the image as you see it; (x1, y1) is the top-left corner, (x2, y2) the bottom-right."
        )
