"""(crop, caption, hard negatives) pairs for the tiny CLIP, cut from the synthetic task by the real zoom-in tool.

A hard negative is the caption with one attribute of one object changed (:data:`ATTRIBUTES`), so the
verifier must tell colour, shape, letter, ink and pattern apart; :func:`negative_kind` names which.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class CropPair:
    """One training example: a crop, its ground-truth caption, and hallucinated captions for it."""

    image: Image.Image
    caption: str
    negatives: list[str] = field(default_factory=list)  # one attribute changed each; never equal to caption
    # object / partial / background / wide; a label pair (label_pair): "label" (the text is one object's label) or
    # "label_scene" (an empty or several-object crop: the text is its caption). Splits the metrics.
    kind: str = ""
    group: str = ""  # sample id: train/val split is by sample, so no image is in both
    # Other texts also true of this crop (the caption of a label pair, the labels of the objects in it): never
    # its negatives, and positives of it when they query the batch's crops (empty: only `caption` is true).
    matches: tuple[str, ...] = ()


# Crop kinds and how often each is drawn (weights); see _crop_box.
CROP_KINDS = {"object": 4, "partial": 2, "background": 1, "wide": 1}


def _object_pattern():
    import re

    from mapo.data import synth

    colors = "|".join(synth.COLORS)
    shapes = "|".join(synth.SHAPES)
    inks = "|".join(synth.INKS)
    patterns = "|".join(synth.PATTERNS)
    return re.compile(
        rf"\b(?:a|an) ({colors}) ({shapes}) with the letter ([{synth.GLYPHS}])(?: in ({inks}))?(?: and ({patterns}))?\b"
    )


def object_phrase(color: str, shape: str, glyph: str, ink: str | None = None, pattern: str | None = None) -> str:
    """The synthetic task's caption of one object (checked against ``caption_for_crop`` in the tests).

    ``ink`` (the letter's colour) and ``pattern`` (the surface pattern) are named on the levels
    that draw and ask them (``asks="ink"`` / ``"pattern"``), else None.
    """
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {shape} with the letter {glyph}" + (f" in {ink}" if ink else "") + (
        f" and {pattern}" if pattern else ""
    )


def hallucinated_captions(caption: str, rng: random.Random) -> list[str]:
    """Captions for the same crop with one thing wrong: one attribute of one object, or existence.

    For ``caption`` naming objects: one variant each with a different colour, shape and
    glyph (and letter colour or pattern, where the caption names one) of a random object, and
    ``"empty background"``. For an empty background: a caption of a random object that is not there.
    """
    from mapo.data import synth

    objects = [(m.span(), m.groups()) for m in _object_pattern().finditer(caption)]
    if not objects:
        return [object_phrase(rng.choice(list(synth.COLORS)), rng.choice(synth.SHAPES), rng.choice(synth.GLYPHS))]
    (start, end), (color, shape, glyph, ink, pattern) = rng.choice(objects)
    variants = [
        (rng.choice([c for c in synth.COLORS if c != color]), shape, glyph, ink, pattern),
        (color, rng.choice([s for s in synth.SHAPES if s != shape]), glyph, ink, pattern),
        (color, shape, rng.choice([g for g in synth.GLYPHS if g != glyph]), ink, pattern),
    ]
    if ink:
        variants.append((color, shape, glyph, rng.choice([i for i in synth.INKS if i != ink]), pattern))
    if pattern:
        variants.append((color, shape, glyph, ink, rng.choice([p for p in synth.PATTERNS if p != pattern])))
    out = [caption[:start] + object_phrase(*v) + caption[end:] for v in variants]
    return [c for c in out if c != caption] + ["empty background"]


ATTRIBUTES = ("colour", "shape", "glyph", "ink", "pattern")  # the groups of an object phrase, in order


def negative_kind(caption: str, negative: str) -> str:
    """What ``negative`` gets wrong about a crop captioned ``caption``.

    One of ``colour``/``shape``/``glyph``/``ink``/``pattern`` (first object attribute that differs),
    ``empty`` (says "empty background" of a crop with objects), ``absent`` (names
    an object in an empty crop) or ``other`` (any other difference). Used to break
    the hard-negative AUROC down by attribute in :func:`mapo.verifier.inspect.evaluate`.
    """
    if negative == "empty background":
        return "empty"
    if caption == "empty background":
        return "absent"
    pattern = _object_pattern()
    ours, theirs = pattern.findall(caption), pattern.findall(negative)
    if len(ours) == len(theirs):
        for a, b in zip(ours, theirs):
            for attribute, x, y in zip(ATTRIBUTES, a, b):
                if x != y:
                    return attribute
    return "other"


def _crop_box(kind: str, boxes_view: list[tuple[float, float, float, float]], view_wh, rng: random.Random):
    """A box in view pixels for one crop ``kind``.

    object: an object's box, scaled 1-2x and shifted up to 15% of its side (the
    policy's good zooms); partial: an object's box shifted 35-65% of its side so
    it is cut by the crop edge; background: a random 28-40 px box (its caption
    says what, if anything, lies inside); wide: a random 40-100% of the view.
    """
    vw, vh = view_wh
    if kind in ("object", "partial") and boxes_view:
        x1, y1, x2, y2 = rng.choice(boxes_view)
        side = max(x2 - x1, y2 - y1)
        if kind == "object":
            half = side * rng.uniform(1.0, 2.0) / 2
            shift = (rng.uniform(-0.15, 0.15) * side, rng.uniform(-0.15, 0.15) * side)
        else:
            half = side / 2
            frac = rng.uniform(0.35, 0.65) * side
            angle = rng.uniform(0, 2 * math.pi)
            shift = (frac * math.cos(angle), frac * math.sin(angle))
        cx, cy = (x1 + x2) / 2 + shift[0], (y1 + y2) / 2 + shift[1]
        return (cx - half, cy - half, cx + half, cy + half)
    side = rng.uniform(28, 40) if kind == "background" else rng.uniform(0.4, 1.0) * min(vw, vh)
    x, y = rng.uniform(0, max(0.0, vw - side)), rng.uniform(0, max(0.0, vh - side))
    return (x, y, x + side, y + side)


def synth_pairs(
    samples: Sequence, crops_per_sample: int, tool_config, seed: int, *, label_frac: float = 0.0
) -> list[CropPair]:
    """Crops of ``samples`` made by :func:`mapo.agent.tools.zoom_in`, captioned by ``caption_for_crop``.

    Boxes are drawn in view pixels (as the policy would write them) and go through
    the tool's validation, mapping and resize, so the crops are exactly what the
    policy sees as observations. On pattern levels a crop the tool shrank does not show
    the 2 px pattern, so its caption does not name it (:func:`without_patterns`).

    ``label_frac`` > 0: each crop also gets, with that probability, a second pair of the same image
    scored against short tool-call labels (:func:`label_pair`), and every caption pair lists the labels
    of the objects it shows in ``matches``. With 0 the pairs are exactly those of earlier versions.
    """
    from mapo.agent import tools
    from mapo.data import synth

    kinds, weights = list(CROP_KINDS), list(CROP_KINDS.values())
    pairs = []
    for index, sample in enumerate(samples):
        rng = random.Random(f"{seed}:{index}")
        label_rng = random.Random(f"{seed}:{index}:label")  # its own stream: label_frac 0 leaves `rng` as it was
        image = sample.load_image()
        view_wh = tools.view_size(image.size, tool_config)
        boxes_view = [tools.original_to_view(b.xyxy, view_wh, image.size) for b in sample.boxes]
        for _ in range(crops_per_sample):
            kind = rng.choices(kinds, weights)[0]
            result = tools.zoom_in(image, list(_crop_box(kind, boxes_view, view_wh, rng)), view_wh, tool_config)
            if result.crop is None:
                continue
            caption = synth.caption_for_crop(sample, result.box_original)
            if crop_scale(result.crop, result.box_original) < _PATTERN_MIN_SCALE:
                caption = without_patterns(caption)
            negatives = hallucinated_captions(caption, rng)
            if not label_frac:
                pairs.append(CropPair(result.crop, caption, negatives, kind, sample.id))
                continue
            inside = objects_inside(sample.boxes, result.box_original)
            labels = tuple(dict.fromkeys(b.label for b in inside if b.label))
            pairs.append(CropPair(result.crop, caption, negatives, kind, sample.id, matches=labels))
            if label_rng.random() < label_frac:
                pair = label_pair(result.crop, caption, inside, sample.boxes, label_rng)
                if pair is not None:
                    kind = "label" if pair[1] != caption else "label_scene"
                    pairs.append(CropPair(pair[0], pair[1], pair[2], kind, sample.id, matches=pair[3]))
    return pairs


def objects_inside(boxes: Sequence, box_original, min_inside: float = 0.5) -> list:
    """The boxes at least ``min_inside`` of whose area lies inside ``box_original`` (as ``caption_for_crop`` counts them)."""
    x1, y1, x2, y2 = box_original
    out = []
    for b in boxes:
        ix = max(0.0, min(x2, b.x2) - max(x1, b.x1))
        iy = max(0.0, min(y2, b.y2) - max(y1, b.y1))
        if ix * iy >= min_inside * b.area:
            out.append(b)
    return out


def is_label_pair(pair: CropPair) -> bool:
    """Whether ``pair`` was made by :func:`label_pair` (its metrics are kept apart from the caption metrics)."""
    return pair.kind in ("label", "label_scene")


def label_variants(label: str, rng: random.Random) -> list[str]:
    """``label`` ("red square") with its colour, then its shape changed; [] for a label of other words."""
    from mapo.data import synth

    words = label.split()
    if len(words) != 2 or words[0] not in synth.COLORS or words[1] not in synth.SHAPES:
        return []
    color, shape = words
    return [f"{rng.choice([c for c in synth.COLORS if c != color])} {shape}",
            f"{color} {rng.choice([s for s in synth.SHAPES if s != shape])}"]


def label_pair(image: Image.Image, caption: str, inside: Sequence, boxes: Sequence, rng: random.Random):
    """``(image, text, negatives, matches)`` of a crop against the short labels a tool call writes, or None.

    The label (``Box.label``, e.g. "red square") is what the policy writes in its tool call before it
    sees the crop; the pair teaches the verifier that a label matches a crop of that object and not
    a crop of another object of the same image, nor an empty crop:

    - one object in the crop: its label is the text; the negatives are the labels of the image's other
      objects (same-image hard negatives), the label with its colour or its shape changed, and
      "empty background";
    - no object (an empty cell, background): "empty background" is the text; the negatives are the
      labels of the image's objects (each is what a call could have asked for here);
    - several objects: the caption is the text; the negatives are the labels of the objects not in it.

    ``matches`` are the texts also true of the crop (its caption, the labels of its objects).
    None when the image has no labelled object to contrast.
    """
    labels_in = list(dict.fromkeys(b.label for b in inside if b.label))
    labels_out = [lab for lab in dict.fromkeys(b.label for b in boxes if b.label) if lab not in labels_in]
    if len(inside) == 1 and labels_in:
        text = labels_in[0]
        negatives = labels_out + [v for v in label_variants(text, rng) if v not in labels_in] + ["empty background"]
    else:
        text = caption
        negatives = labels_out
    matches = tuple(t for t in [caption, *labels_in] if t != text)
    negatives = [n for n in dict.fromkeys(negatives) if n != text and n not in matches]
    return (image, text, negatives, matches) if negatives else None


# A surface pattern has a period of 2 original pixels and the same mean in every variant
# (mapo.data.synth_render.PATTERNS), so any downscale averages or aliases it away: a crop shrunk by the
# tool's pixel budget does not show it, and a caption that names it there teaches noise.
_PATTERN_MIN_SCALE = 0.99


def crop_scale(crop: Image.Image, box_original: tuple[float, float, float, float]) -> float:
    """Crop pixels per original pixel, along x (the tool keeps the aspect ratio)."""
    return crop.width / max(1e-9, box_original[2] - box_original[0])


def without_patterns(caption: str) -> str:
    """``caption`` with every object's pattern phrase removed ("... the letter K and stripes" -> "... the letter K")."""
    from mapo.data import synth

    return re.sub(rf" and (?:{'|'.join(synth.PATTERNS)})\b", "", caption)
