from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mapo.agent import tools
from mapo.data import Box
from mapo.data.sample import correct_first, shuffle_options
from mapo.data import synth_render
from mapo.data.oracle import oracle_trajectory
from mapo.data.synth import (
    LEVELS,
    MAX_GLYPH_VIEW_PX,
    MIN_GLYPH_OBS_PX,
    SynthConfig,
    caption_for_crop,
    generate,
    level_config,
    resolution_check,
)
from mapo.data.synth_render import COLORS, glyph_extent, glyph_font
from mapo.data.task import tool_config_for


# The hard level's question logic on a small canvas: same knobs, a fraction of the rendering time.
FAST_HARD = level_config("hard", canvas_size=448, glyph_px=8, require_zoom=False)


def test_deterministic_by_seed_and_index():
    a, b = generate(4, seed=3, config="medium"), generate(6, seed=3, config="medium")
    for x, y in zip(a, b):  # sample i does not depend on n
        assert x.image == y.image and x.options == y.options and x.boxes == y.boxes
    c = generate(4, seed=4, config="medium")
    assert all(x.image != z.image for x, z in zip(a, c))


@pytest.mark.parametrize("level", [name for name, knobs in LEVELS.items() if knobs.get("require_zoom", True)])
def test_glyph_needs_zooming_at_every_level(level):
    """The guarantee: glyph < 3 px in the global view, > 10 px in the oracle's crop (real tool code)."""
    config = level_config(level)
    tc = tool_config_for(config)
    font = glyph_font(config.glyph_px, config.glyphs, config.glyph_stroke)
    assert glyph_extent(font, config.glyphs, config.glyph_stroke) <= config.glyph_px
    # The font's bbox is honest: draw every glyph and measure the ink.
    for g in config.glyphs:
        im = Image.new("L", (4 * config.glyph_px, 4 * config.glyph_px), 0)
        ImageDraw.Draw(im).text(
            (2 * config.glyph_px, 2 * config.glyph_px), g, fill=255, font=font, anchor="mm",
            stroke_width=config.glyph_stroke, stroke_fill=255,
        )
        ys, xs = np.nonzero(np.asarray(im) > 0)
        assert max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) <= config.glyph_px, g
    for sample in generate(6, seed=0, config=config):
        image = sample.load_image()
        view_w, view_h = tools.view_size(image.size, tc)
        glyph_view = config.glyph_px * max(view_w / image.width, view_h / image.height)
        assert glyph_view < MAX_GLYPH_VIEW_PX
        traj = oracle_trajectory(sample, rng_or_seed=0)
        for crop, box in zip(traj.images[1:], traj.boxes_original):
            glyph_obs = config.glyph_px * min(crop.width / (box[2] - box[0]), crop.height / (box[3] - box[1]))
            assert glyph_obs > MIN_GLYPH_OBS_PX
    assert resolution_check(config)["glyph_view_px"] < MAX_GLYPH_VIEW_PX


def test_level_guarantees():
    easy = generate(20, 0, "easy")
    assert all(len(s.boxes) == 1 and s.boxes[0].is_target for s in easy)  # one salient target
    medium = generate(30, 0, "medium")
    similar = 0
    for s in medium:
        target = s.target_boxes[0]
        assert 3 <= len(s.boxes) <= 6
        labels = [b.label for b in s.boxes]
        assert len(set(labels)) == len(labels)  # the named target is unique
        color, shape = target.label.split()
        similar += sum((b.label.split()[0] == color) != (b.label.split()[1] == shape) for b in s.boxes if not b.is_target)
    assert similar > 0  # distractors do share colour or shape: the question needs binding
    hard = generate(40, 0, FAST_HARD)
    assert {s.category for s in hard} == {"direct_attributes", "relative_position"}


def test_questions_options_and_answers_are_consistent():
    for s in generate(40, 1, FAST_HARD):
        assert len(s.options) == 4 and len(set(s.options)) == 4
        if s.category == "direct_attributes":
            target = s.target_boxes[0]
            assert s.question == f"What letter is on the {target.label}?"
            assert target.caption.endswith(f"the letter {s.answer_text}")
            glyphs_present = {b.caption[-1] for b in s.boxes}
            distractors = [o for o in s.options if o != s.answer_text]
            # Distractors are glyphs present in the image while there are enough of them.
            assert sum(d in glyphs_present for d in distractors) == min(3, len(s.boxes) - 1)
        else:
            a, b = s.target_boxes
            (ax, ay), (bx, by) = a.center, b.center
            expected = {True: "left" if ax < bx else "right", False: "above" if ay < by else "below"}[ay == by]
            assert s.answer_text == expected and (ax == bx or ay == by)


def test_small_alphabet_and_fixed_option_order():
    config = level_config("medium", glyphs="LSTX", fixed_options=True, glyph_stroke=1)
    samples = generate(40, 5, config)
    for s in samples:
        assert s.options == ["L", "S", "T", "X"]  # always the alphabet's order: the letter follows from the glyph
        assert s.answer == "ABCD"[s.options.index(s.target_boxes[0].caption[-1])]
        assert {b.caption[-1] for b in s.boxes} <= set("LSTX")  # 3-6 objects share 4 letters: repeats allowed
    assert {s.answer for s in samples} == set("ABCD")
    shuffled = generate(40, 5, level_config("medium", glyphs="LSTX"))
    assert len({tuple(s.options) for s in shuffled}) > 1
    assert [s.answer_text for s in shuffled] == [s.answer_text for s in samples]  # same glyphs, other order
    with pytest.raises(ValueError, match="glyphs must be"):
        SynthConfig(glyphs="LL")
    with pytest.raises(ValueError, match="glyphs must be"):
        SynthConfig(glyphs="L1")
    with pytest.raises(ValueError, match="n_options"):
        SynthConfig(glyphs="LST")  # 4 options from 3 letters
    with pytest.raises(ValueError, match="glyph_stroke"):
        SynthConfig(glyph_stroke=5)


def test_ink_questions_ask_the_letters_colour():
    from mapo.data.synth_render import INKS

    config = level_config("distractors", asks="ink", glyph_stroke=1)
    for s in generate(20, 2, config):
        target = s.target_boxes[0]
        assert s.question == f"What colour is the letter on the {target.label}?"
        assert s.category == "direct_attributes" and s.task.family == "ink"
        assert set(s.options) <= set(INKS) and len(set(s.options)) == 4
        assert target.caption.endswith(f"in {s.answer_text}")
        # The letter really is drawn in that colour: the target's centre holds ink-coloured pixels.
        img = np.asarray(s.load_image()).astype(int)
        x1, y1, x2, y2 = (int(v) for v in target.xyxy)
        patch = img[y1:y2, x1:x2].reshape(-1, 3)
        assert (np.abs(patch - np.array(INKS[s.answer_text])).sum(-1) < 30).sum() >= 10
    # The letter questions' images and answers are unchanged by the ink knob's existence.
    assert generate(3, 0, "easy")[0].question.startswith("What letter")
    with pytest.raises(ValueError, match="asks must be"):
        SynthConfig(asks="size")


def test_pattern_questions_and_what_the_view_keeps_of_a_pattern():
    from mapo.data import synth

    orders = set()
    for s in generate(12, 4, "pattern_distractors"):
        target = s.target_boxes[0]
        assert s.question == f"What pattern is on the {target.label}?"
        assert sorted(s.options) == sorted(synth.PATTERNS) and s.task.family == "pattern"
        # The options are shuffled per sample by the V* reader's seeded shuffle (one order in every format).
        assert shuffle_options(correct_first(s.options, s.answer, key=s.id), key=s.id) == (s.options, s.answer)
        assert target.caption.endswith(f" and {s.answer_text}")
        orders.add(tuple(s.options))
    assert len(orders) > 1
    # The same object under each pattern: equal mean colour, and a 4x smaller view that differs by at
    # most two grey levels (rounding), while the full-resolution pixels differ a lot.
    font = synth_render.glyph_font(11)
    full, views = {}, {}
    for pattern in synth.PATTERNS:
        o = synth_render.SceneObject("green", "circle", "A", (14, 14, 98, 98), (0, 0), pattern=pattern)
        img = Image.new("RGB", (112, 112), (150, 150, 150))
        synth_render.draw_shape(ImageDraw.Draw(img), o)
        img = synth_render.with_patterns(img, [o], 11)
        synth_render.draw_glyph(ImageDraw.Draw(img), o, font)
        full[pattern] = np.asarray(img).astype(int)
        views[pattern] = np.asarray(img.resize((28, 28), Image.BICUBIC)).astype(int)
    for pattern in synth.PATTERNS[1:]:
        assert np.abs(full[pattern][20:92, 20:92].mean((0, 1)) - full["no pattern"][20:92, 20:92].mean((0, 1))).max() < 0.2
        assert np.abs(full[pattern] - full["no pattern"]).max() > 20
        assert np.abs(views[pattern] - views["no pattern"]).max() <= 2  # rounding, at the outline


def test_position_tint_encodes_x_and_y():
    # Cell-aligned objects keep a margin, so row 0 and column 0 are background.
    s = generate(1, 0, SynthConfig(texture_strength=0.0))[0]
    img = np.asarray(s.load_image()).astype(float)
    assert img[0, -1, 0] - img[0, 0, 0] > 100  # red grows with x
    assert img[-1, 0, 2] - img[0, 0, 2] > 100  # blue grows with y
    assert np.ptp(img[0, :, 1]) == 0  # green carries no position
    flat = generate(1, 0, SynthConfig(texture_strength=0.0, tint_strength=0.0))[0]
    assert np.ptp(np.asarray(flat.load_image())[0, :, :]) == 0


def test_caption_for_crop():
    s = generate(1, 2, "medium")[0]
    ordered = sorted(s.boxes, key=lambda b: (b.center[1], b.center[0]))
    whole = caption_for_crop(s, (0, 0, 448, 448))
    assert whole == " and ".join(b.caption for b in ordered)
    b = s.boxes[0]
    assert caption_for_crop(s, b) == b.caption
    half = Box(b.x1, b.y1, (b.x1 + b.x2) / 2 + 1, b.y2)  # just over half of the object
    assert caption_for_crop(s, half) == b.caption
    quarter = Box(b.x1, b.y1, (b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2)
    assert caption_for_crop(s, quarter) != b.caption
    assert caption_for_crop(s, (0, 0, 1, 1)) == "empty background"
    with pytest.raises(ValueError, match="4 numbers"):
        caption_for_crop(s, (1, 2, 3))


def test_articles_are_grammatical():
    captions = [b.caption for s in generate(30, 0, FAST_HARD) for b in s.boxes]
    assert not any(c.startswith("a orange") for c in captions)
    assert any(c.startswith("an orange") for c in captions)


def test_config_rejects_bad_combinations():
    with pytest.raises(ValueError, match="needs zooming"):
        SynthConfig(glyph_px=20)  # 20 * 112 / 448 = 5 view px
    SynthConfig(glyph_px=20, require_zoom=False)
    with pytest.raises(ValueError, match="max_objects"):
        SynthConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="two objects"):
        SynthConfig(relative_frac=0.5)
    with pytest.raises(ValueError, match="unknown level"):
        level_config("extreme")
    with pytest.raises(ValueError, match="unknown SynthConfig knob"):
        level_config("easy", canvas=1)
    with pytest.raises(ValueError, match="non-negative integer"):
        generate(-1, 0)
    assert len(COLORS) * 4 >= level_config("hard").max_objects
