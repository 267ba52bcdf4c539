"""Drawing the synthetic task: its visual vocabulary (colours, inks, glyphs, patterns) and the renderer.

:func:`render` turns a :class:`SceneObject` list into the canvas image: a grey background with a
position tint (red grows with x, blue with y) and optional texture and grid lines, each object's
shape, its surface pattern (faded in from a plain rim so no brightness step survives the view's
downsampling) and its letter. What the objects are and which questions they answer is
:mod:`mapo.data.synth`'s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (45, 85, 215),
    "yellow": (240, 215, 40),
    "purple": (135, 60, 185),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Letter colours for ``asks="ink"``: none is an object colour, each contrasts with most of them.
INKS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "cyan": (0, 235, 235),
    "pink": (255, 120, 200),
}
# Capital letters that stay distinct when small (no I/J/O/Q/W look-alikes).
GLYPHS = "ABCDEFGHKLMNPRSTUVXYZ"
# Surface patterns for ``asks="pattern"``: brightness factors over the object, period 2 original
# pixels. Every pattern averages to 0.8 of the fill colour, so any 2 x 2 block (and a view
# downsampled 4x) looks the same whichever pattern it is; only a zoom shows which.
PATTERNS = ("no pattern", "stripes", "bands", "checks")  # stripes run up-down, bands left-right
PATTERN_LIGHT, PATTERN_DARK = 1.0, 0.6  # plain objects are drawn at their mean, 0.8
PATTERN_RIM = 9  # pixels of plain rim (odd: a MinFilter size) over which a pattern fades in


@dataclass
class SceneObject:
    """One object on the canvas: a lettered shape in a grid cell (box in original pixels)."""

    color: str
    shape: str
    glyph: str
    box: tuple[int, int, int, int]
    cell: tuple[int, int]  # (row, col)
    ink: str | None = None  # the letter's colour (INKS) when the level asks for it; else black or white by contrast
    pattern: str | None = None  # the surface pattern (PATTERNS) when the level asks for it; else a flat fill

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def caption(self) -> str:
        article = "an" if self.color[0] in "aeiou" else "a"
        ink = f" in {self.ink}" if self.ink else ""
        pattern = f" and {self.pattern}" if self.pattern else ""
        return f"{article} {self.color} {self.shape} with the letter {self.glyph}{ink}{pattern}"


def render(config: Any, rng: np.random.Generator, objects: list[SceneObject]) -> Image.Image:
    """The canvas of ``config`` (a SynthConfig) with ``objects`` drawn: background, grid lines, shapes, patterns, letters."""
    image = Image.fromarray(background(config, rng))
    draw = ImageDraw.Draw(image)
    if config.grid_lines > 0:
        shade = int(round(255 * (1 - config.grid_lines)))
        cell = config.canvas_size / config.grid
        for k in range(1, config.grid):
            p = int(round(k * cell))
            draw.line([(p, 0), (p, config.canvas_size)], fill=(shade, shade, shade), width=1)
            draw.line([(0, p), (config.canvas_size, p)], fill=(shade, shade, shade), width=1)
    font = glyph_font(config.glyph_px, config.glyphs, config.glyph_stroke)
    for o in objects:
        draw_shape(draw, o)
    if any(o.pattern for o in objects):
        image = with_patterns(image, objects, config.glyph_px)
        draw = ImageDraw.Draw(image)
    for o in objects:
        draw_glyph(draw, o, font, config.glyph_stroke)
    return image


def with_patterns(image: Image.Image, objects: list[SceneObject], glyph_px: int) -> Image.Image:
    """``image`` with each patterned object's pixels (outline included) modulated by its pattern.

    Every pattern averages to the same colour: a plain object is drawn at ``base`` = 0.8 of its
    fill, a patterned one alternates ``base + a`` and ``base - a`` (integers, so the pairs cancel
    exactly; ``a`` = 0.2 of the fill, faded in from the outline, see below).
    """
    pixels = np.asarray(image).astype(np.float32)  # (H, W, 3)
    signs = pattern_signs(image.height, image.width)
    mean = (PATTERN_LIGHT + PATTERN_DARK) / 2
    for o in objects:
        if not o.pattern:
            continue
        mask_image = Image.new("L", image.size, 0)
        draw_shape(ImageDraw.Draw(mask_image), o, fill=255, outline=255)
        mask = np.asarray(mask_image) > 0  # (H, W)
        # The pattern fades in from a plain rim: a pattern cut off sharply at the outline leaves a
        # brightness step whose phase survives the 4x downsampling into the view (a leak a linear
        # probe reads, python research/pixel_probe.py); a smooth envelope does not.
        # So does a plain patch around the letter, whose antialiased edge would blend with the pattern.
        keep = mask_image.copy()
        cx, cy = glyph_centre(o)
        half = glyph_px / 2 + 2
        ImageDraw.Draw(keep).rectangle((cx - half, cy - half, cx + half, cy + half), fill=0)
        # Filter only a window around the object (the rank filter over the whole canvas per object was
        # most of a sample's rendering time). The mask is 0 outside the box and the margin covers both
        # filters' reach, so the envelope is the same as from the whole canvas.
        x1, y1, x2, y2 = o.box
        margin = 3 * PATTERN_RIM
        window = (max(0, x1 - margin), max(0, y1 - margin), min(image.width, x2 + margin + 1),
                  min(image.height, y2 + margin + 1))
        inner = keep.crop(window).filter(ImageFilter.MinFilter(PATTERN_RIM)).filter(ImageFilter.GaussianBlur(PATTERN_RIM / 3))
        envelope_full = np.zeros(mask.shape, np.float32)
        envelope_full[window[1] : window[3], window[0] : window[2]] = np.asarray(inner, np.float32)
        envelope = envelope_full[mask] / 255.0  # (M,) in [0, 1]
        fill = pixels[mask]  # (M, 3)
        base = np.rint(fill * mean)
        amplitude = np.rint(fill * (PATTERN_LIGHT - mean) * envelope[:, None])
        pixels[mask] = base + signs[o.pattern][mask][:, None] * amplitude
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=4)
def pattern_signs(height: int, width: int) -> dict[str, np.ndarray]:
    """Each pattern's +1/-1 (0: none) per pixel of a ``height`` x ``width`` canvas (shared: do not write)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return {
        "no pattern": np.zeros(ys.shape, np.float32),
        "stripes": np.where(xs % 2 == 0, 1.0, -1.0),
        "bands": np.where(ys % 2 == 0, 1.0, -1.0),
        "checks": np.where((xs + ys) % 2 == 0, 1.0, -1.0),
    }


def background(config: Any, rng: np.random.Generator) -> np.ndarray:
    """Grey base + smooth grey texture + position tint (red ~ x, blue ~ y), as (H, W, 3) uint8.

    The texture is grey on purpose: colour is reserved for the position cue.
    """
    size = config.canvas_size
    coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
    # Bilinear upsampling of coarse noise: smooth blotches, cheap, and PNG-friendly.
    texture = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))  # (H, W)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    grey = 150.0 + 20.0 * config.texture_strength * texture  # (H, W)
    img = np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3)
    img[:, :, 0] += 70.0 * config.tint_strength * ramp[None, :]  # red grows left -> right
    img[:, :, 2] += 70.0 * config.tint_strength * ramp[:, None]  # blue grows top -> bottom
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def glyph_font(glyph_px: int, glyphs: str = GLYPHS, stroke: int = 0) -> ImageFont.FreeTypeFont:
    """The largest bundled font whose every glyph in ``glyphs`` (drawn ``stroke`` px bolder) fits in ``glyph_px``²."""
    best = ImageFont.load_default(size=4)
    for size in range(4, 4 * glyph_px):
        font = ImageFont.load_default(size=size)
        if glyph_extent(font, glyphs, stroke) > glyph_px:
            break
        best = font
    return best


def glyph_extent(font: ImageFont.FreeTypeFont, glyphs: str = GLYPHS, stroke: int = 0) -> int:
    """The largest width or height, in pixels, of any glyph in ``glyphs`` drawn with ``font`` (and ``stroke``)."""
    extents = []
    for g in glyphs:
        left, top, right, bottom = font.getbbox(g, stroke_width=stroke)
        extents.append(max(right - left, bottom - top))
    return max(extents)


def draw_shape(draw: ImageDraw.ImageDraw, o: SceneObject, fill: Any = None, outline: Any = (0, 0, 0)) -> None:
    """The object's filled shape with its outline (``fill`` defaults to its colour; a mask passes 255)."""
    x1, y1, x2, y2 = o.box
    fill = COLORS[o.color] if fill is None else fill
    outline_w = max(1, (x2 - x1) // 30)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if o.shape == "circle":
        draw.ellipse(o.box, fill=fill, outline=outline, width=outline_w)
    elif o.shape == "square":
        draw.rectangle(o.box, fill=fill, outline=outline, width=outline_w)
    elif o.shape == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=fill, outline=outline, width=outline_w)
    elif o.shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill, outline=outline, width=outline_w)


def glyph_centre(o: SceneObject) -> tuple[float, float]:
    """Where the letter sits: the box centre, or the centroid of a triangle (its widest inside place)."""
    x1, y1, x2, y2 = o.box
    cy = y1 + 2 * (y2 - y1) / 3 if o.shape == "triangle" else (y1 + y2) / 2
    return (x1 + x2) / 2, cy


def draw_glyph(draw: ImageDraw.ImageDraw, o: SceneObject, font: ImageFont.FreeTypeFont, stroke: int = 0) -> None:
    """The object's letter at its centre (the centroid of a triangle), in a contrasting or its asked colour."""
    fill = COLORS[o.color]
    cx, cy = glyph_centre(o)
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    ink = INKS[o.ink] if o.ink else (0, 0, 0) if luminance > 140 else (255, 255, 255)
    draw.text((cx, cy), o.glyph, fill=ink, font=font, anchor="mm", stroke_width=stroke, stroke_fill=ink)
