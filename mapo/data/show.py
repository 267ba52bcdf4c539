"""A contact sheet of samples: thumbnails with their boxes, question and answer (``mapo data show``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from mapo.data.sample import Sample

TARGET_COLOR = (255, 0, 0)
OTHER_COLOR = (255, 255, 255)


def render_grid(samples: Sequence[Sample], *, cols: int = 4, thumb: int = 256, text_lines: int = 4) -> Image.Image:
    """One image: a thumbnail per sample (targets boxed in red, other objects in white) above its question.

    ``thumb`` is the thumbnail side in pixels; the question, options and answer
    are wrapped into ``text_lines`` lines under each thumbnail.
    """
    if not samples:
        raise ValueError("render_grid needs at least one sample")
    if cols < 1 or thumb < 32:
        raise ValueError(f"cols must be >= 1 and thumb >= 32, got cols={cols}, thumb={thumb}")
    font = ImageFont.load_default(size=max(9, thumb // 22))
    line_h = font.size + 3
    cell_w, cell_h = thumb + 8, thumb + 8 + line_h * text_lines
    rows = (len(samples) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (250, 250, 250))
    for i, sample in enumerate(samples):
        x0, y0 = (i % cols) * cell_w + 4, (i // cols) * cell_h + 4
        sheet.paste(_thumbnail(sample, thumb), (x0, y0))
        text = _caption(sample)
        wrapped = textwrap.wrap(text, width=max(10, int(thumb / (font.size * 0.55))))[:text_lines]
        draw = ImageDraw.Draw(sheet)
        for j, line in enumerate(wrapped):
            draw.text((x0, y0 + thumb + 2 + j * line_h), line, fill=(20, 20, 20), font=font)
    return sheet


def _thumbnail(sample: Sample, thumb: int) -> Image.Image:
    image = sample.load_image()
    scale = thumb / max(image.size)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(small)
    for box in sorted(sample.boxes, key=lambda b: b.is_target):  # targets drawn last, on top
        xy = [box.x1 * scale, box.y1 * scale, box.x2 * scale, box.y2 * scale]
        draw.rectangle(xy, outline=TARGET_COLOR if box.is_target else OTHER_COLOR, width=2 if box.is_target else 1)
    canvas = Image.new("RGB", (thumb, thumb), (230, 230, 230))
    canvas.paste(small, ((thumb - small.width) // 2, (thumb - small.height) // 2))
    return canvas


def _caption(sample: Sample) -> str:
    options = " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(sample.options))
    return f"{sample.question} {options} -> {sample.answer}"
