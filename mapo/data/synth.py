"""The synthetic visual-search task: small lettered shapes on a large canvas.

Each image is a canvas with a grey background (flat on the 448 px levels, textured on
``hard``) and a few objects on a coarse
grid of cells. An object is a shape (circle, square, triangle, diamond) in a
colour, with a capital letter (the *glyph*) drawn on it. Questions mirror V*:

- ``glyph`` (V* ``direct_attributes``): "What letter is on the red triangle?"
  Options are four letters, the distractors taken first from glyphs on other
  objects in the same image.
- ``relative`` (V* ``relative_position``): "Where is the red triangle relative
  to the blue circle?" with options left / right / above / below. The two
  targets always share a grid row or column, so the answer is unambiguous.

**Zooming is required** for glyph questions: every level is built so that the
glyph spans under 3 pixels in the model's global view (``view_side``) and over
10 pixels in the crop the oracle's zoom returns (``obs_side``);
:func:`resolution_check` computes both numbers and ``SynthConfig`` refuses a
configuration that breaks the first when ``require_zoom`` is on. Relative
questions come with no such guarantee (objects are visible in the global view,
as in V*).

**Position cues (a departure from realism, on purpose).** A tiny policy trained
from scratch learns *what* is in an image quickly but *where* slowly
(docs/warmstart.md measures it stage by stage). So the background carries a tint whose red channel
grows with x and whose blue channel grows with y (``tint_strength``), optional
faint grid lines (``grid_lines``), and objects sit on a coarse grid
(``grid``, ``cell_aligned``) so target boxes in view pixels take few values.
Set ``tint_strength=0`` and ``cell_aligned=False`` for a cue-free variant.

Everything is deterministic by ``(seed, index)``: sample ``i`` of ``generate(n,
seed)`` is the same for any ``n``.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapo.core.config import knob, partial
from mapo.data.sample import Box, Sample, shuffle_options
from mapo.data.synth_render import COLORS, GLYPHS, INKS, PATTERNS, SHAPES, SceneObject, render
from mapo.data.task import TaskSpec

DIRECTIONS = ("left", "right", "above", "below")
CATEGORY_OF_FAMILY = {
    "glyph": "direct_attributes", "ink": "direct_attributes", "pattern": "direct_attributes",
    "relative": "relative_position",
}
MAX_GLYPH_VIEW_PX = 3.0  # the glyph must span fewer view pixels than this (needs zooming)
MIN_GLYPH_OBS_PX = 10.0  # ... and more than this many pixels in the oracle's crop


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic visual-search task (level presets: :func:`level_config`)."""

    level: str = knob("custom", "name recorded in each sample's meta: a key of LEVELS (`mapo data synth --help` lists them) or custom")
    canvas_size: int = knob(448, "canvas side in original pixels (square canvas)")
    grid: int = knob(4, "objects sit in a grid x grid layout of cells, at most one per cell")
    min_objects: int = knob(1, "fewest objects per image (targets included)")
    max_objects: int = knob(1, "most objects per image (targets included)")
    object_frac: float = knob(0.7, "object side as a fraction of the cell side")
    cell_aligned: bool = knob(True, "centre objects in their cells (few distinct target boxes); else jitter them")
    glyph_px: int = knob(11, "largest glyph extent in original pixels (font chosen to fit)")
    view_side: int = knob(112, "side of the model's global view in pixels (view budget = view_side^2)")
    obs_side: int = knob(224, "side of a zoomed observation in pixels (observation budget = obs_side^2)")
    distractor_similarity: float = knob(0.0, "probability that a distractor shares the target's colour or shape")
    relative_frac: float = knob(0.0, "fraction of relative-position questions (the rest ask for a glyph)")
    n_options: int = knob(4, "answer options per question (glyph questions; relative ones have 4 directions)")
    asks: str = knob(
        "letter", "what a direct-attribute question asks: 'letter' (which letter), 'ink' (its colour) or 'pattern'"
    )
    glyph_stroke: int = knob(0, "extra stroke width of the glyph in original pixels (0 = the font's own; 1 = bold)")
    glyphs: str = knob(GLYPHS, "alphabet the glyphs are drawn from (distinct capital letters)")
    fixed_options: bool = knob(
        False, "list options in one fixed order (the alphabet's): the answer letter is then a function of the glyph"
    )
    tint_strength: float = knob(1.0, "position cue: background red grows with x, blue with y (0 = off)")
    grid_lines: float = knob(0.0, "position cue: opacity of faint lines on cell borders (0 = off)")
    texture_strength: float = knob(1.0, "amplitude of the smooth background texture (0 = flat)")
    require_zoom: bool = knob(True, f"reject configs whose glyph spans >= {MAX_GLYPH_VIEW_PX:g} view pixels")

    def __post_init__(self) -> None:
        if self.canvas_size < 64 or self.grid < 1 or self.canvas_size // self.grid < 16:
            raise ValueError(
                f"canvas_size={self.canvas_size} with grid={self.grid} gives cells under 16 px; "
                "use a larger canvas or fewer cells"
            )
        if not 1 <= self.min_objects <= self.max_objects <= self.grid**2:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= grid^2 = {self.grid**2}, "
                f"got {self.min_objects}, {self.max_objects}"
            )
        if self.max_objects > len(COLORS) * len(SHAPES):
            raise ValueError(f"max_objects must be <= {len(COLORS) * len(SHAPES)} (distinct colour-shape pairs)")
        if self.relative_frac > 0 and self.max_objects < 2:
            raise ValueError("relative-position questions need two objects: set max_objects >= 2")
        if not 0.2 <= self.object_frac <= 1.0:
            raise ValueError(f"object_frac must be in [0.2, 1], got {self.object_frac}")
        for name in ("distractor_similarity", "relative_frac", "tint_strength", "grid_lines"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.glyphs) < 2 or len(set(self.glyphs)) != len(self.glyphs) or not set(self.glyphs) <= set(GLYPHS):
            raise ValueError(f"glyphs must be at least 2 distinct letters from {GLYPHS!r}, got {self.glyphs!r}")
        if not 2 <= self.n_options <= len(self.glyphs):
            raise ValueError(f"n_options must be in [2, {len(self.glyphs)}] (the size of glyphs), got {self.n_options}")
        if self.glyph_px < 4 or self.glyph_px > self.object_frac * self.canvas_size / self.grid / 2:
            raise ValueError(f"glyph_px={self.glyph_px} must be >= 4 and at most half the object side")
        if self.asks not in ("letter", "ink", "pattern"):
            raise ValueError(f"asks must be 'letter', 'ink' or 'pattern', got {self.asks!r}")
        if self.asks == "pattern" and self.n_options > len(PATTERNS):
            raise ValueError(f"pattern questions have at most {len(PATTERNS)} options, got n_options={self.n_options}")
        if self.asks == "ink" and self.n_options > len(INKS):
            raise ValueError(f"ink questions have at most {len(INKS)} options ({', '.join(INKS)}), got n_options={self.n_options}")
        if not 0 <= self.glyph_stroke <= 3:
            raise ValueError(f"glyph_stroke must be in [0, 3], got {self.glyph_stroke}")
        if self.view_side < 28 or self.obs_side < 28:
            raise ValueError("view_side and obs_side must be >= 28 (one Qwen2.5-VL merged patch)")
        if self.require_zoom:
            view_px = self.glyph_px * self.view_side / self.canvas_size
            if view_px >= MAX_GLYPH_VIEW_PX:
                raise ValueError(
                    f"the glyph spans {view_px:.2f} view pixels (glyph_px * view_side / canvas_size); it must be "
                    f"< {MAX_GLYPH_VIEW_PX:g} so the question needs zooming. Lower glyph_px or view_side, "
                    "raise canvas_size, or set require_zoom=false"
                )


# Knobs set on top of a level preset (``data.synth`` of the SFT and RL configs): typed and checked
# like SynthConfig's, unset ones (None) keep the level's value; ``level_config(level, **o.set_keys())``.
SynthOverrides = partial(SynthConfig)


# object_frac 0.75 on the 448 px levels: the tool's smallest crop (28 view px = one 112 px cell)
# then has IoU (0.75)^2 = 0.56 >= 0.5 with the object box, so a perfect zoom counts as a hit@0.5
# (at 0.7 it was 0.485: no zoom could ever hit).
# texture_strength 0 on the 448 px levels: the background texture cut a tiny policy's first-zoom
# hits by about two thirds (docs/warmstart.md, "Probe"); the hard level brings it back.
_ONE_TARGET = dict(
    canvas_size=448, grid=4, min_objects=1, max_objects=1, object_frac=0.75, glyph_px=11, view_side=112, obs_side=224,
    texture_strength=0.0,
)
_AMONG_DISTRACTORS = {**_ONE_TARGET, "min_objects": 3, "max_objects": 6, "distractor_similarity": 0.0}
# The letter's *colour* (black, white, cyan or pink; drawn bold), options in one fixed order. An
# experiment (docs/warmstart.md): a tiny policy learned to copy the colour word but not to read it from
# its crop. The colour is also in the view's pixels (python research/pixel_probe.py), so only a
# policy's no-tool accuracy shows it needs the zoom.
_ASK_INK = dict(asks="ink", fixed_options=True, glyph_stroke=1)
# The object's surface *pattern* (none, stripes, bands or checks, period 2 px, all averaging to the same
# colour): a property of the whole object, so the crop shows it everywhere, while the 4x smaller view
# averages it away (docs/data.md: at most 2 grey levels left). obs_side 112: a cell's crop is shown pixel
# for pixel, so the pattern has the same phase in every 14 px patch (7 whole periods) and a linear patch
# embedding sees it (at 224 px it alternates sign). Options are shuffled per sample (seeded by its id, the
# same shuffle as the V* reader's), so the answer letter must be looked up in the options text; the first
# warm-start stages pin `fixed_options: true` (configs/warmstart_closeup.yaml, warmstart_pattern.yaml).
_ASK_PATTERN = dict(asks="pattern", glyph_stroke=1, obs_side=112)

LEVELS: dict[str, dict[str, Any]] = {
    # One salient target: learn to find and zoom on it, read the glyph.
    "easy": _ONE_TARGET,
    # The target among distractors with random attributes: find the named object among others.
    "distractors": _AMONG_DISTRACTORS,
    # The target among distractors that share its colour or shape: bind both words to a location.
    "medium": {**_AMONG_DISTRACTORS, "distractor_similarity": 0.6},
    # The same first two stages asking the letter's colour, then the surface pattern (docs/warmstart.md).
    "ink": {**_ONE_TARGET, **_ASK_INK},
    "ink_distractors": {**_AMONG_DISTRACTORS, **_ASK_INK},
    "pattern": {**_ONE_TARGET, **_ASK_PATTERN},
    "pattern_distractors": {**_AMONG_DISTRACTORS, **_ASK_PATTERN},
    # A reading stage with no search: the whole 112 px image is one patterned object, shown pixel for
    # pixel as in a crop of the pattern levels. Nothing needs zooming here (require_zoom off).
    "closeup": {**_ONE_TARGET, **_ASK_PATTERN, "canvas_size": 112, "grid": 1, "require_zoom": False},
    # Larger canvas, many similar distractors, relative positions, weaker position cues.
    "hard": dict(
        canvas_size=1344, grid=6, min_objects=8, max_objects=14, object_frac=0.6, glyph_px=16, view_side=224,
        obs_side=224, distractor_similarity=0.8, relative_frac=0.3, tint_strength=0.5, grid_lines=0.15,
    ),
}


def level_config(name: str, **overrides: Any) -> SynthConfig:
    """The preset for level ``name`` (easy, distractors, medium, hard), with optional knob overrides."""
    if name not in LEVELS:
        raise ValueError(f"unknown level {name!r}; choose from {', '.join(LEVELS)}")
    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown SynthConfig knob(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return SynthConfig(level=name, **{**LEVELS[name], **overrides})


def task_fingerprint(level: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved config of ``level`` with ``overrides`` as plain data: what a cached stage built from the task
    depends on (a change of a level's defaults in the code is a new key)."""
    from mapo.core.config import to_dict

    return to_dict(level_config(level, **(overrides or {})))


def resolution_check(config: SynthConfig) -> dict[str, float]:
    """How many pixels the glyph spans in the global view and in the oracle's crop.

    The oracle zooms on the target's box; the tool expands boxes under 28 view
    pixels to 28 around their centre, then resizes the crop to ``obs_side``.
    """
    scale_view = config.view_side / config.canvas_size
    object_side = config.object_frac * config.canvas_size / config.grid
    crop_side = max(object_side, 28 / scale_view)  # original pixels
    return {
        "glyph_view_px": config.glyph_px * scale_view,
        "glyph_obs_px": config.glyph_px * config.obs_side / crop_side,
    }


# ----------------------------------------------------------------------------- generation


def generate(n: int, seed: int, config: SynthConfig | str = "easy") -> list[Sample]:
    """``n`` samples; sample ``i`` depends only on ``(seed, i, config)``. Images are PNG bytes."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(config, str):
        config = level_config(config)
    if not isinstance(config, SynthConfig):
        raise ValueError(f"config must be a SynthConfig or a level name, got {type(config).__name__}")
    return [generate_one(config, seed, i) for i in range(n)]


def generate_one(config: SynthConfig, seed: int, index: int) -> Sample:
    """Sample ``index`` of ``generate(n, seed, config)`` alone (same bytes), for streaming or parallel use."""
    rng = np.random.default_rng([seed, index])
    family = "relative" if rng.random() < config.relative_frac else {"letter": "glyph"}.get(config.asks, config.asks)
    objects = _place_objects(config, rng, family)
    image = render(config, rng, objects)
    sample_id = f"synth-{config.level}-s{seed}-{index:06d}"
    if family == "glyph":
        question, correct_first, targets = _glyph_question(config, rng, objects)
    elif family == "ink":
        question, correct_first, targets = _ink_question(config, rng, objects)
    elif family == "pattern":
        question, correct_first, targets = _pattern_question(config, rng, objects)
    else:
        question, correct_first, targets = _relative_question(objects)
    if config.fixed_options:
        order = {"glyph": config.glyphs, "ink": list(INKS), "pattern": PATTERNS, "relative": DIRECTIONS}[family]
        options, answer = _fixed_order(correct_first, order)
    else:
        options, answer = shuffle_options(correct_first, key=sample_id)
    boxes = [
        Box(*map(float, o.box), label=o.label, caption=o.caption, is_target=i in targets) for i, o in enumerate(objects)
    ]
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # level 1: 3-4x faster than the default, ~10% larger
    return Sample(
        id=sample_id,
        image=buf.getvalue(),
        question=question,
        options=options,
        answer=answer,
        category=CATEGORY_OF_FAMILY[family],
        boxes=boxes,
        meta={"source": "synth", "level": config.level, "seed": seed, "index": index, "glyph_px": config.glyph_px},
        task=TaskSpec(view_side=config.view_side, obs_side=config.obs_side, grid=config.grid, family=family),
    )


def _place_objects(config: SynthConfig, rng: np.random.Generator, family: str) -> list[SceneObject]:
    """Objects in distinct cells with distinct colour-shape pairs; objects[0] (and [1] for relative) are targets."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    if family == "relative":
        n = max(n, 2)
    cells = _pick_cells(config.grid, n, rng, pair_in_line=family == "relative")
    pairs = _pick_attributes(n, config.distractor_similarity, rng)
    # With fewer glyphs than objects, distractors may repeat letters (only the target's matters).
    glyphs = rng.choice(list(config.glyphs), size=n, replace=n > len(config.glyphs))
    cell_side = config.canvas_size / config.grid
    side = int(round(config.object_frac * cell_side))
    objects = []
    for (row, col), (color, shape), glyph in zip(cells, pairs, glyphs):
        slack = cell_side - side
        dx, dy = (slack / 2, slack / 2) if config.cell_aligned else rng.uniform(0, slack, size=2)
        x1, y1 = int(round(col * cell_side + dx)), int(round(row * cell_side + dy))
        objects.append(SceneObject(color, shape, str(glyph), (x1, y1, x1 + side, y1 + side), (row, col)))
    if config.asks == "ink":  # drawn only here, so letter levels keep their random stream (and images)
        for o, ink in zip(objects, rng.choice(list(INKS), size=n, replace=True)):
            o.ink = str(ink)
    if config.asks == "pattern":
        for o, pattern in zip(objects, rng.choice(list(PATTERNS), size=n, replace=True)):
            o.pattern = str(pattern)
    return objects


def _pick_cells(grid: int, n: int, rng: np.random.Generator, pair_in_line: bool) -> list[tuple[int, int]]:
    all_cells = [(r, c) for r in range(grid) for c in range(grid)]
    if not pair_in_line:
        idx = rng.choice(len(all_cells), size=n, replace=False)
        return [all_cells[i] for i in idx]
    # The two targets share a row or a column so "left/right/above/below" has one answer.
    first = all_cells[int(rng.integers(len(all_cells)))]
    in_line = [c for c in all_cells if c != first and (c[0] == first[0] or c[1] == first[1])]
    second = in_line[int(rng.integers(len(in_line)))]
    rest = [c for c in all_cells if c not in (first, second)]
    idx = rng.choice(len(rest), size=n - 2, replace=False)
    return [first, second] + [rest[i] for i in idx]


def _pick_attributes(n: int, similarity: float, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Distinct (colour, shape) pairs; distractors share the target's colour or shape with prob ``similarity``."""
    colors, shapes = list(COLORS), list(SHAPES)
    target = (colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))])
    chosen = [target]
    all_pairs = [(c, s) for c in colors for s in shapes]
    similar = [p for p in all_pairs if p != target and (p[0] == target[0] or p[1] == target[1])]
    while len(chosen) < n:
        pool = similar if rng.random() < similarity else all_pairs
        pool = [p for p in pool if p not in chosen] or [p for p in all_pairs if p not in chosen]
        chosen.append(pool[int(rng.integers(len(pool)))])
    return chosen


def _glyph_question(config: SynthConfig, rng: np.random.Generator, objects: list[SceneObject]):
    target = objects[0]
    # Plausible distractors first: glyphs present in the image, those on similar objects before others.
    present = sorted(
        (o for o in objects[1:]),
        key=lambda o: (-(o.color == target.color) - (o.shape == target.shape), o.cell),
    )
    distractors = list(dict.fromkeys(o.glyph for o in present if o.glyph != target.glyph))[: config.n_options - 1]
    absent = [g for g in config.glyphs if g != target.glyph and g not in distractors]
    need = config.n_options - 1 - len(distractors)
    distractors += [str(g) for g in rng.choice(absent, size=need, replace=False)]
    question = f"What letter is on the {target.label}?"
    return question, [target.glyph] + distractors, {0}


def _ink_question(config: SynthConfig, rng: np.random.Generator, objects: list[SceneObject]):
    target = objects[0]
    others = [i for i in INKS if i != target.ink]
    distractors = [str(i) for i in rng.choice(others, size=config.n_options - 1, replace=False)]
    return f"What colour is the letter on the {target.label}?", [target.ink] + distractors, {0}


def _pattern_question(config: SynthConfig, rng: np.random.Generator, objects: list[SceneObject]):
    target = objects[0]
    others = [p for p in PATTERNS if p != target.pattern]
    distractors = [str(p) for p in rng.choice(others, size=config.n_options - 1, replace=False)]
    return f"What pattern is on the {target.label}?", [target.pattern] + distractors, {0}


def _fixed_order(correct_first: list[str], order) -> tuple[list[str], str]:
    """``correct_first`` listed in the order of ``order``, and the letter of the correct one."""
    from mapo.data.sample import LETTERS

    options = sorted(correct_first, key=list(order).index)
    return options, LETTERS[options.index(correct_first[0])]


def _relative_question(objects: list[SceneObject]):
    a, b = objects[0], objects[1]
    if a.cell[0] == b.cell[0]:
        answer = "left" if a.cell[1] < b.cell[1] else "right"
    else:
        answer = "above" if a.cell[0] < b.cell[0] else "below"
    question = f"Where is the {a.label} relative to the {b.label}?"
    return question, [answer] + [d for d in DIRECTIONS if d != answer], {0, 1}


# ----------------------------------------------------------------------------- ground-truth captions


def caption_for_crop(sample: Sample, box_original: Any, min_inside: float = 0.5) -> str:
    """The ground-truth caption of a crop: the objects at least ``min_inside`` inside it.

    ``box_original`` is ``(x1, y1, x2, y2)`` in original pixels (or a :class:`Box`).
    Objects are listed in reading order (top to bottom, then left to right) and
    joined with "and", e.g. "a red triangle with the letter K and a blue circle
    with the letter P"; no object gives "empty background". Wording is fixed, so
    the same crop always gets the same caption.
    """
    x1, y1, x2, y2 = _as_box(box_original)
    inside = []
    for b in sample.boxes:
        ix = max(0.0, min(x2, b.x2) - max(x1, b.x1))
        iy = max(0.0, min(y2, b.y2) - max(y1, b.y1))
        if ix * iy >= min_inside * b.area:
            inside.append(b)
    if not inside:
        return "empty background"
    inside.sort(key=lambda b: (round(b.center[1]), round(b.center[0])))
    return " and ".join(b.caption or f"a {b.label}" for b in inside)


def _as_box(box: Any) -> tuple[float, float, float, float]:
    if isinstance(box, Box):
        return box.xyxy
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box_original must be 4 numbers (x1, y1, x2, y2) in original pixels, got {box!r}") from None
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box_original needs x2 > x1 and y2 > y1, got {box!r}")
    return x1, y1, x2, y2

