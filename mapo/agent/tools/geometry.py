"""Pixels shared by every tool: Qwen smart-resize, the pixel budgets, the view<->original mapping.

Coordinates. The model sees the input image resized by :func:`smart_resize` to
the *view* (:func:`view_size`) and writes boxes in view pixels;
:func:`view_to_original` maps them to original pixels (the only place this
mapping lives). An observation image is resized to the observation budget with
:func:`crop_view_size`. Boxes are ``(x1, y1, x2, y2)`` floats, continuous
pixel-edge coordinates: ``(0, 0, w, h)`` is the whole image.

Pixel budgets (``view_*_pixels``, ``obs_*_pixels``) are small by default for
the CPU demo; real-scale runs raise them (Qwen2.5-VL default max is
``12845056``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any


from mapo.core.config import knob

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
    """Pixel budgets of the view and of observations, and the zoom-in tool's box validation rules."""

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


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes in the same frame (0 if disjoint)."""
    ax1, ay1, ax2, ay2 = _check_box(a, "a")
    bx1, by1, bx2, by2 = _check_box(b, "b")
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0
