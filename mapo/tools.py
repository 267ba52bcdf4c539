"""The zoom-in tool: Qwen smart-resize, the view<->original mapping, box validation, crop.

Coordinates. The model sees the input image resized by :func:`smart_resize` to
the *view* (:func:`view_size`) and writes ``bbox_2d`` in view pixels. The tool
maps the box to original pixels with :func:`view_to_original` (the only place
this mapping lives), crops the *original* image (that is what makes zooming
reveal detail) and resizes the crop to the observation pixel budget with
:func:`smart_resize` again. Boxes are ``(x1, y1, x2, y2)`` floats, continuous
pixel-edge coordinates: ``(0, 0, w, h)`` is the whole image.

Where we depart from or guess at the paper and DeepEyes:

- DeepEyes crops the original with view coordinates and, on HR-Bench, never
  applies its scale map; we always map through :func:`view_to_original`.
- DeepEyes, for a box with a side under 28 px, scales the whole box up keeping
  its aspect ratio; we expand each short side independently to
  ``min_box_side`` around the box centre and shift it back inside the image
  (the crop stays on what the model pointed at). The aspect-ratio check
  (``max_aspect``, DeepEyes: 100) runs on the clamped box before expansion,
  as in DeepEyes.
- Pixel budgets (``view_*_pixels``, ``obs_*_pixels``) are small by default for
  the CPU demo; real-scale runs raise them (Qwen2.5-VL default max is
  ``12845056``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mapo.config import knob

Box = tuple[float, float, float, float]

QWEN_MAX_ASPECT = 200  # smart_resize refuses images more elongated than this


def _is_int(v: Any) -> bool:
    """Python or NumPy integer, not bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    """Python or NumPy real number, not bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL resize rule, identical to transformers' ``qwen2_vl`` ``smart_resize``.

    Rounds each side to a multiple of ``factor`` (Python's round-half-to-even),
    then, if the area is above ``max_pixels`` (below ``min_pixels``), scales both
    sides by the same factor and floors (ceils) to multiples of ``factor``.
    Returns ``(height, width)``. Raises ValueError for non-positive sizes or an
    aspect ratio above 200.
    """
    for name, value in (("height", height), ("width", width), ("factor", factor)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    height, width, factor = int(height), int(width), int(factor)
    if max(height, width) / min(height, width) > QWEN_MAX_ASPECT:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {QWEN_MAX_ASPECT}, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ToolConfig:
    """Pixel budgets and box validation rules of the zoom-in tool."""

    factor: int = knob(
        28, "sides are multiples of this; the rollout replaces it with the policy's patch x merge (Qwen2.5-VL 28, Qwen3-VL 32)"
    )
    view_min_pixels: int = knob(28 * 28 * 4, "min pixels of the global image as the model sees it")
    view_max_pixels: int = knob(224 * 224, "max pixels of the global image as the model sees it")
    obs_min_pixels: int = knob(28 * 28 * 4, "min pixels of an observation (resized crop)")
    obs_max_pixels: int = knob(224 * 224, "max pixels of an observation (resized crop)")
    min_box_side: float = knob(28.0, "box sides shorter than this (view pixels) are expanded around the centre")
    max_aspect: float = knob(100.0, "boxes longer/shorter than this ratio (after clamping) are rejected")
    max_image_pixels: int = knob(16384 * 16384 // 2, "larger input images are refused")

    def __post_init__(self) -> None:
        ints = ("factor", "view_min_pixels", "view_max_pixels", "obs_min_pixels", "obs_max_pixels", "max_image_pixels")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for lo, hi in (("view_min_pixels", "view_max_pixels"), ("obs_min_pixels", "obs_max_pixels")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) must not exceed {hi} ({getattr(self, hi)})")
        for name in ("view_max_pixels", "obs_max_pixels"):
            if getattr(self, name) < self.factor * self.factor:
                raise ValueError(f"{name} must hold at least one factor x factor patch ({self.factor ** 2} pixels)")
        if not (isinstance(self.min_box_side, (int, float)) and self.min_box_side > 0):
            raise ValueError(f"min_box_side must be a positive number of view pixels, got {self.min_box_side!r}")
        if not (isinstance(self.max_aspect, (int, float)) and 1 <= self.max_aspect <= QWEN_MAX_ASPECT):
            raise ValueError(
                f"max_aspect must be in [1, {QWEN_MAX_ASPECT}] (crops beyond {QWEN_MAX_ASPECT} cannot be "
                f"resized by smart_resize), got {self.max_aspect!r}"
            )


DEFAULT_TOOL_CONFIG = ToolConfig()


def with_factor(config: ToolConfig, factor: int) -> ToolConfig:
    """``config`` with the side multiple of the policy that will see the images.

    The view a model sees is smart-resized to multiples of its own ``patch x merge``
    (28 px for Qwen2.5-VL, 32 px for Qwen3-VL); a view computed with another factor
    would be resized again by the processor and shift the model's coordinate frame.
    """
    if not _is_int(factor) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return config if config.factor == factor else dataclasses.replace(config, factor=int(factor))


def _check_size(size: Any, name: str) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(_is_int(v) and v > 0 for v in size)
    ):
        raise ValueError(f"{name} must be a (width, height) pair of positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def view_size(original_size: tuple[int, int], config: ToolConfig = DEFAULT_TOOL_CONFIG) -> tuple[int, int]:
    """The (width, height) of the image as the model sees it, from the original (width, height)."""
    w, h = _check_size(original_size, "original_size")
    vh, vw = smart_resize(h, w, config.factor, config.view_min_pixels, config.view_max_pixels)
    return vw, vh


def crop_view_size(crop_wh: tuple[int, int], config: ToolConfig = DEFAULT_TOOL_CONFIG) -> tuple[int, int]:
    """The (width, height) an observation crop of size ``crop_wh`` is resized to."""
    w, h = _check_size(crop_wh, "crop_wh")
    oh, ow = smart_resize(h, w, config.factor, config.obs_min_pixels, config.obs_max_pixels)
    return ow, oh


def _check_box(box: Any, name: str = "box") -> Box:
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        raise ValueError(f"{name} must be 4 numbers (x1, y1, x2, y2), got {box!r}")
    try:
        # An int like 10**400 is real but has no float: math.isfinite raises OverflowError on it.
        ok = all(_is_real(v) and math.isfinite(v) for v in box)
    except OverflowError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must hold finite numbers, got {_short(box)}")
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _short(value: Any, limit: int = 120) -> str:
    """``repr`` cut to ``limit`` characters: a 400-digit number need not be echoed to the model in full."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scale(box: Box, sx: float, sy: float) -> Box:
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def view_to_original(box: Any, view_wh: tuple[int, int], original_wh: tuple[int, int]) -> Box:
    """Map ``(x1, y1, x2, y2)`` from view pixels to original pixels (no clamping).

    The single coordinate mapping of the project: x scales by
    ``original_w / view_w`` and y by ``original_h / view_h``.
    """
    vw, vh = _check_size(view_wh, "view_wh")
    ow, oh = _check_size(original_wh, "original_wh")
    return _scale(_check_box(box), ow / vw, oh / vh)


def original_to_view(box: Any, view_wh: tuple[int, int], original_wh: tuple[int, int]) -> Box:
    """Inverse of :func:`view_to_original` (for oracles and plots)."""
    vw, vh = _check_size(view_wh, "view_wh")
    ow, oh = _check_size(original_wh, "original_wh")
    return _scale(_check_box(box), vw / ow, vh / oh)


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


__all__ = [
    "Box",
    "DEFAULT_TOOL_CONFIG",
    "ToolConfig",
    "ZoomResult",
    "crop_view_size",
    "original_to_view",
    "smart_resize",
    "validate_box",
    "view_size",
    "view_to_original",
    "with_factor",
    "zoom_in",
]


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes in the same frame (0 if disjoint)."""
    ax1, ay1, ax2, ay2 = _check_box(a, "a")
    bx1, by1, bx2, by2 = _check_box(b, "b")
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0
