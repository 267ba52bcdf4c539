"""Making a sample playable: decode its image in full and bring it into the pixel range the policy sees.

Training and evaluation call :func:`prepare_sample` on each sample just before the
rollout. It raises ``ValueError`` (the caller skips and reports the row, and the
run goes on) for what cannot be played:

- an image that does not decode in full (a truncated PNG passes a header check);
- more options than letters (A-Z).

Images that the tool or the processor cannot take as they are, but that can be
brought into range, are adjusted rather than dropped, and ``meta["image_adjusted"]``
says how (the eval record carries it):

- **too elongated** (aspect over :data:`mapo.agent.tools.QWEN_MAX_ASPECT`, or so thin that
  its view, at least one ``factor`` high, would exceed the pixel budget): the short
  side is padded with black at the right or bottom. Original pixels keep their
  coordinates, so boxes do not move.
- **too small** for the processor (its view would be under the processor's minimum
  pixels, e.g. a 1x1 or 50x50 image when the processor's minimum is above the tool's):
  the image is upscaled (bicubic) and its boxes scaled with it.

The padded or upscaled image becomes the sample's original: boxes in the record are
in its pixels, and the crops are cut from it.
"""

from __future__ import annotations

import dataclasses
import math

from PIL import Image

from mapo.data.sample import LETTERS, Sample
from mapo.agent.tools import QWEN_MAX_ASPECT, ToolConfig, view_size

# Aspect ratios tried, loosest first, when an image must be padded to fit.
_ASPECT_CAPS = (QWEN_MAX_ASPECT, 100, 50, 25, 12, 6, 3, 1)
# Upscale factors tried, on top of the one that just reaches the minimum (smart_resize rounds).
_UPSCALE_MARGINS = (1.0, 1.1, 1.25, 1.5, 2.0)


def fit_image(
    image: Image.Image, tool: ToolConfig, pixels: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[float, float], str | None]:
    """``image`` padded and/or upscaled so that its view is valid and inside ``pixels``.

    Args:
        image: the decoded original.
        tool: the tool config whose view budget the rollout applies (:func:`mapo.agent.tools.view_size`).
        pixels: the processor's ``(min, max)`` pixels (:func:`mapo.policy.processor.pixel_range`); None = the tool's budget only.

    Returns:
        ``(image, (sx, sy), note)``: the image to play, the factors that map original
        coordinates onto it (1 unless upscaled), and a sentence saying what was done
        (None when nothing was).

    Raises:
        ValueError: no padding and upscaling within :data:`_ASPECT_CAPS` fits the image.
    """
    w, h = image.size
    if _view_fits((w, h), tool, pixels):
        return image, (1.0, 1.0), None
    for cap in _ASPECT_CAPS:
        pw, ph = _padded_size(w, h, cap)
        for scale in _upscales(pw, ph, tool, pixels):
            size = (math.ceil(pw * scale), math.ceil(ph * scale))
            if size[0] * size[1] > tool.max_image_pixels or not _view_fits(size, tool, pixels):
                continue
            return _apply(image, (pw, ph), size)
    raise ValueError(
        f"image {w}x{h} cannot be brought into the view budget [{tool.view_min_pixels}, {tool.view_max_pixels}] "
        f"pixels{f' and the processor range {list(pixels)}' if pixels else ''} by padding or resizing"
    )


def _view_fits(size: tuple[int, int], tool: ToolConfig, pixels: tuple[int, int] | None) -> bool:
    try:
        vw, vh = view_size(size, tool)
    except ValueError:  # aspect over QWEN_MAX_ASPECT
        return False
    if vw * vh > tool.view_max_pixels:  # smart_resize keeps a side of at least `factor`, so thin views overflow
        return False
    return pixels is None or pixels[0] <= vw * vh <= pixels[1]


def _padded_size(w: int, h: int, cap: float) -> tuple[int, int]:
    """The size after padding the short side so that long / short <= ``cap``."""
    if w >= h:
        return w, max(h, math.ceil(w / cap))
    return max(w, math.ceil(h / cap)), h


def _upscales(w: int, h: int, tool: ToolConfig, pixels: tuple[int, int] | None) -> list[float]:
    """1, then factors that lift the view above the processor's minimum (smart_resize rounds, so a few)."""
    low = max(tool.view_min_pixels, pixels[0] if pixels else 0)
    need = math.sqrt(low / (w * h))
    return [1.0] + [need * m for m in _UPSCALE_MARGINS if need * m > 1.0]


def _apply(image: Image.Image, padded: tuple[int, int], size: tuple[int, int]) -> tuple[Image.Image, tuple[float, float], str]:
    w, h = image.size
    notes = []
    out = image
    if padded != (w, h):
        out = Image.new("RGB", padded, (0, 0, 0))
        out.paste(image.convert("RGB"), (0, 0))
        notes.append(f"padded {w}x{h} to {padded[0]}x{padded[1]} (black, right/bottom) to bring its aspect ratio in range")
    if size != padded:
        out = out.resize(size, Image.Resampling.BICUBIC)
        notes.append(f"upscaled {padded[0]}x{padded[1]} to {size[0]}x{size[1]} to reach the minimum pixels")
    return out, (size[0] / padded[0], size[1] / padded[1]), "; ".join(notes)


def prepare_sample(sample: Sample, tool: ToolConfig, pixels: tuple[int, int] | None = None) -> Sample:
    """``sample`` with its image decoded in full and fitted (:func:`fit_image`); ValueError if it cannot be played.

    The returned sample holds the decoded image in memory (no second decode in the
    rollout); an adjusted one also has its boxes mapped onto the new image and
    ``meta["image_adjusted"]`` set.
    """
    if len(sample.options) > len(LETTERS):
        raise ValueError(f"sample {sample.id}: {len(sample.options)} options; at most {len(LETTERS)} can be lettered A-Z")
    image = sample.load_image()  # decodes every pixel: ValueError naming the sample when the file is truncated
    try:
        fitted, (sx, sy), note = fit_image(image, tool, pixels)
    except ValueError as e:
        raise ValueError(f"sample {sample.id}: {e}") from None
    if note is None:
        return dataclasses.replace(sample, image=fitted)
    boxes = [dataclasses.replace(b, x1=b.x1 * sx, y1=b.y1 * sy, x2=b.x2 * sx, y2=b.y2 * sy) for b in sample.boxes]
    return dataclasses.replace(sample, image=fitted, boxes=boxes, meta={**sample.meta, "image_adjusted": note})


__all__ = ["fit_image", "prepare_sample"]
