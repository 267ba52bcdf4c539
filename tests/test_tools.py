from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mapo.agent.tools import (
    ToolConfig,
    crop_view_size,
    original_to_view,
    smart_resize,
    validate_box,
    view_size,
    view_to_original,
    zoom_in,
)

# ----------------------------------------------------------------------------- smart_resize


def test_smart_resize_hand_values():
    # Inside the budget: round each side to a multiple of 28. 50/28 = 1.79 -> 2 -> 56; 100/28 = 3.57 -> 4 -> 112.
    assert smart_resize(50, 100, 28, 3136, 50176) == (56, 112)
    # Python rounds half to even, as Qwen does: 42/28 = 1.5 -> 2 -> 56; 70/28 = 2.5 -> 2 -> 56.
    assert smart_resize(42, 70, 28, 1, 10**9) == (56, 56)
    # Over the budget: 8K with Qwen2.5-VL's default max 1003520. Rounded 4312 x 7672 is too many pixels, so
    # beta = sqrt(4320*7680 / 1003520) = 5.7499; floor(4320/5.7499/28) = 26 -> 728; floor(7680/5.7499/28) = 47 -> 1316.
    assert smart_resize(4320, 7680) == (728, 1316)
    # Over the observation budget 224^2: rounded 196 x 308 = 60368 > 50176; beta = sqrt(60000/50176) = 1.0935;
    # floor(200/1.0935/28) = 6 -> 168; floor(300/1.0935/28) = 9 -> 252.
    assert smart_resize(200, 300, 28, 3136, 50176) == (168, 252)
    # Under the minimum: 30 x 40 rounds to 28 x 28 = 784 < 3136; beta = sqrt(3136/1200) = 1.6166;
    # ceil(30*1.6166/28) = 2 -> 56; ceil(40*1.6166/28) = 3 -> 84.
    assert smart_resize(30, 40, 28, 3136, 50176) == (56, 84)


def test_smart_resize_aspect_limit_and_bad_sizes():
    assert smart_resize(10, 2000, 28, 3136, 10**7)  # aspect exactly 200 is allowed
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2001)
    for bad in [(0, 10), (10, -1), (10.5, 10), (True, 10)]:
        with pytest.raises(ValueError, match="positive integer"):
            smart_resize(*bad)  # type: ignore[arg-type]


def _transformers_smart_resize():
    try:  # the PIL image processor module imports without torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference
    except ImportError:
        try:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference
        except ImportError:
            return None
    return reference


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(1, 9000),
    w=st.integers(1, 9000),
    budget=st.sampled_from([(3136, 50176), (56 * 56, 14 * 14 * 4 * 1280), (784, 12544), (3136, 12845056)]),
)
def test_smart_resize_matches_transformers(h, w, budget):
    reference = _transformers_smart_resize()
    if reference is None:
        pytest.skip("transformers' qwen2_vl smart_resize is not importable")
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError):
            smart_resize(h, w, 28, *budget)
        return
    assert smart_resize(h, w, 28, *budget) == tuple(reference(h, w, 28, *budget))


def test_smart_resize_matches_transformers_on_boundary_cases():
    reference = _transformers_smart_resize()
    if reference is None:
        pytest.skip("transformers' qwen2_vl smart_resize is not importable")
    # Sizes whose scaled sides land exactly on multiples of 28, where float rounding decides.
    for h, w in [(4320, 7680), (1000, 1000), (10, 10), (2160, 3840), (224, 224), (448, 448), (1, 200)]:
        for budget in [(3136, 50176), (56 * 56, 14 * 14 * 4 * 1280)]:
            assert smart_resize(h, w, 28, *budget) == tuple(reference(h, w, 28, *budget)), (h, w, budget)


def test_view_and_crop_sizes_are_in_pil_order():
    assert view_size((100, 50)) == (112, 56)  # (w, h) in, (w, h) out
    assert view_size((7680, 4320)) == (280, 168)  # smart_resize(4320, 7680, 28, 3136, 50176) = (168, 280)
    assert crop_view_size((300, 200)) == (252, 168)  # see test_smart_resize_hand_values
    with pytest.raises(ValueError, match="original_size"):
        view_size((0, 10))
    with pytest.raises(ValueError, match="crop_wh"):
        crop_view_size((10,))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- coordinate mapping


def test_view_to_original_hand_values():
    # View 280 x 168 of a 7680 x 4320 image: x scales by 7680/280 = 27.4286, y by 4320/168 = 25.7143.
    # 28 * 27.4286 = 768; 42 * 25.7143 = 1080; 56 * 27.4286 = 1536; 84 * 25.7143 = 2160.
    assert view_to_original((28, 42, 56, 84), (280, 168), (7680, 4320)) == pytest.approx((768, 1080, 1536, 2160), abs=1e-9)
    # Anisotropic rounding: view 112 x 56 of 100 x 50; x scales by 100/112, y by 50/56.
    assert view_to_original((0, 0, 112, 56), (112, 56), (100, 50)) == pytest.approx((0, 0, 100, 50), abs=1e-12)
    assert view_to_original((56, 28, 112, 56), (112, 56), (100, 50)) == pytest.approx((50, 25, 100, 50), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    box=st.tuples(*[st.floats(-1e4, 1e4, allow_nan=False)] * 4),
    view=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    orig=st.tuples(st.integers(1, 20000), st.integers(1, 20000)),
)
def test_original_view_original_round_trip(box, view, orig):
    back = view_to_original(original_to_view(box, view, orig), view, orig)
    assert back == pytest.approx(box, rel=1e-9, abs=1e-6)


def test_numpy_numbers_are_accepted():
    assert smart_resize(np.int64(50), np.int64(100), 28, 3136, 50176) == (56, 112)
    assert view_to_original(np.array([28, 42, 56, 84], dtype=np.float32).tolist(), (np.int64(280), 168), (7680, 4320))[0] == (
        pytest.approx(768)
    )
    assert validate_box((np.float32(10), np.int32(20), np.float64(100), 120), (224, 224)) == ((10, 20, 100, 120), None)


def test_mapping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="view_wh"):
        view_to_original((0, 0, 1, 1), (0, 10), (10, 10))
    with pytest.raises(ValueError, match="box"):
        view_to_original((0, 0, 1), (10, 10), (10, 10))
    with pytest.raises(ValueError, match="finite"):
        original_to_view((0, 0, 1, math.inf), (10, 10), (10, 10))


# ----------------------------------------------------------------------------- validation


def test_boxes_inside_are_unchanged():
    assert validate_box((10, 20, 100, 120), (224, 224)) == ((10, 20, 100, 120), None)


def test_boxes_partly_outside_are_clamped():
    assert validate_box((-10, -5.5, 50, 60), (224, 224)) == ((0, 0, 50, 60), None)
    assert validate_box((190, 100, 300, 400), (224, 168)) == ((190, 100, 224, 168), None)
    # Clamped to 24 wide, under min_box_side 28: then expanded back inside the image.
    assert validate_box((200, 100, 300, 400), (224, 168)) == ((196, 100, 224, 168), None)


def test_tiny_boxes_are_expanded_around_their_centre_and_kept_inside():
    # 10 x 4 box centred at (105, 52): each side grows to 28 around the centre.
    assert validate_box((100, 50, 110, 54), (224, 224)) == ((91, 38, 119, 66), None)
    # At the corner the expanded box is shifted back inside.
    assert validate_box((0, 0, 5, 5), (224, 224)) == ((0, 0, 28, 28), None)
    assert validate_box((220, 100, 224, 104), (224, 224)) == ((196, 88, 224, 116), None)
    # Only the short side grows.
    assert validate_box((10, 10, 100, 20), (224, 224)) == ((10, 1, 100, 29), None)
    # A view narrower than min_box_side: the box becomes the full side.
    assert validate_box((2, 2, 4, 4), (20, 224)) == ((0, 0, 20, 28), None)
    # Custom minimum.
    assert validate_box((100, 100, 104, 104), (224, 224), ToolConfig(min_box_side=8)) == ((98, 98, 106, 106), None)


@pytest.mark.parametrize(
    "box, needle",
    [
        ((50, 50, 40, 60), "x2 > x1"),
        ((50, 50, 50, 60), "x2 > x1"),
        ((50, 60, 70, 60), "y2 > y1"),
        ((300, 300, 400, 400), "outside the image"),
        ((-50, 10, -1, 20), "outside the image"),
        ((224, 10, 230, 20), "outside the image"),  # touches the right edge only: zero width after clamping
        ((10, 10, 10.5, 200), "too elongated"),
        ((1, 2, 3), "4 numbers"),
        ((1, 2, math.nan, 4), "finite"),
        ("1,2,3,4", "4 numbers"),
        (None, "4 numbers"),
        ((1, 2, "3", 4), "finite numbers"),
    ],
)
def test_rejections_have_clear_messages(box, needle):
    result, error = validate_box(box, (224, 224))
    assert result is None
    assert needle in error
    assert error[0].isalpha() and len(error) > 20  # a sentence, not a code


def test_aspect_limit_is_a_knob_checked_after_clamping():
    # 200 x 10 box: aspect 20.
    assert validate_box((0, 0, 200, 10), (224, 224), ToolConfig(max_aspect=19))[0] is None
    assert validate_box((0, 0, 200, 10), (224, 224), ToolConfig(max_aspect=20))[0] == (0, 0, 200, 28)
    # 400 x 10 before clamping, 224 x 10 after: aspect 22.4 passes a limit of 23.
    assert validate_box((-176, 0, 224, 10), (224, 224), ToolConfig(max_aspect=23))[0] == (0, 0, 224, 28)


@settings(max_examples=300, deadline=None)
@given(
    box=st.tuples(*[st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)] * 4),
    view=st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
)
def test_validated_boxes_are_inside_and_big_enough(box, view):
    config = ToolConfig()
    result, error = validate_box(box, view, config)
    assert (result is None) != (error is None)
    if result is not None:
        x1, y1, x2, y2 = result
        assert 0 <= x1 < x2 <= view[0] and 0 <= y1 < y2 <= view[1]
        assert x2 - x1 >= min(config.min_box_side, view[0]) - 1e-9
        assert y2 - y1 >= min(config.min_box_side, view[1]) - 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"factor": 0}, "factor"),
        ({"view_min_pixels": 10**6}, "view_min_pixels"),
        ({"obs_max_pixels": 100}, "obs_max_pixels"),
        ({"min_box_side": 0}, "min_box_side"),
        ({"max_aspect": 500}, "max_aspect"),
        ({"max_aspect": 0.5}, "max_aspect"),
        ({"max_image_pixels": -1}, "max_image_pixels"),
    ],
)
def test_tool_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToolConfig(**kwargs)


# ----------------------------------------------------------------------------- zoom_in


def _white_fraction(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0  # (h, w)


def _centroid(weights: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(weights.shape)
    total = weights.sum()
    return float((xs * weights).sum() / total), float((ys * weights).sum() / total)


def test_zoom_on_8k_image_lands_on_the_drawn_square():
    # A white 800 x 600 rectangle at original (4800, 2800)-(5600, 3400) on a black 7680 x 4320 image.
    original = Image.new("RGB", (7680, 4320))
    ImageDraw.Draw(original).rectangle((4800, 2800, 5599, 3399), fill="white")
    view = view_size(original.size)  # (280, 168)
    # Ask for twice the rectangle's extent around it, in view pixels (58 x 47, no expansion), as an oracle would.
    target_original = (4400, 2500, 6000, 3700)
    box_view = original_to_view(target_original, view, original.size)
    result = zoom_in(original, box_view)
    assert result.error is None
    assert result.box_original == pytest.approx(target_original, abs=1e-6)
    crop = result.crop
    assert crop.size == crop_view_size((1600, 1200))  # the whole-pixel crop is exactly 1600 x 1200
    # The rectangle fills the middle half of the crop in each direction: 1/4 of its area, centred.
    white = _white_fraction(crop)
    assert white.mean() == pytest.approx(0.25, abs=0.02)
    cx, cy = _centroid(white)
    assert cx == pytest.approx(crop.width / 2, abs=1.0) and cy == pytest.approx(crop.height / 2, abs=1.0)
    # DeepEyes' bug, cropping the original with view coordinates, would see only black here.
    assert np.asarray(original.crop(tuple(int(v) for v in box_view))).max() == 0


def test_zoom_on_8k_tiny_box_is_expanded_and_still_contains_the_square():
    # A 64 x 64 white square; the model points at it with a box of about 2 view pixels.
    original = Image.new("RGB", (7680, 4320))
    ImageDraw.Draw(original).rectangle((5000, 3000, 5063, 3063), fill="white")
    view = view_size(original.size)
    result = zoom_in(original, original_to_view((5000, 3000, 5064, 3064), view, original.size))
    assert result.error is None
    bx1, by1, bx2, by2 = result.box_view
    assert bx2 - bx1 == pytest.approx(28) and by2 - by1 == pytest.approx(28)  # expanded to min_box_side
    # The square's centre (5032, 3032) is the crop's centre, up to whole-pixel rounding of the crop box.
    white = _white_fraction(result.crop)
    assert white.sum() > 0
    ox1, oy1, ox2, oy2 = result.box_original
    expected_cx = (5032 - math.floor(ox1)) / (math.ceil(ox2) - math.floor(ox1)) * result.crop.width
    expected_cy = (3032 - math.floor(oy1)) / (math.ceil(oy2) - math.floor(oy1)) * result.crop.height
    cx, cy = _centroid(white)
    assert cx == pytest.approx(expected_cx, abs=1.0) and cy == pytest.approx(expected_cy, abs=1.0)


def test_zoom_with_explicit_view_size_and_clamping():
    original = Image.new("RGB", (1000, 500), "black")
    ImageDraw.Draw(original).rectangle((0, 0, 99, 99), fill="white")
    # The caller's view is 200 x 100 (scale 5): view box (-10, -10, 20, 20) clamps to (0, 0, 20, 20) -> original 0..100.
    result = zoom_in(original, (-10, -10, 20, 20), view_wh=(200, 100))
    assert result.box_view == (0, 0, 28, 28)  # 20 < 28: expanded, shifted inside
    assert result.box_original == pytest.approx((0, 0, 140, 140))
    white = _white_fraction(result.crop)
    # White occupies the top-left 100/140 of each side.
    assert white.mean() == pytest.approx((100 / 140) ** 2, abs=0.03)


def test_zoom_converts_modes_and_upscales_small_crops():
    original = Image.new("RGBA", (100, 100), (255, 0, 0, 255))
    result = zoom_in(original, (0, 0, 56, 56))
    assert result.crop.mode == "RGB"
    assert result.crop.width * result.crop.height >= ToolConfig().obs_min_pixels


@pytest.mark.parametrize("bbox", [(300, 300, 400, 400), (5, 5, 1, 1), None, "zoom", (1, 2, 3), (0, 0, math.inf, 4)])
def test_zoom_returns_errors_for_bad_boxes(bbox):
    result = zoom_in(Image.new("RGB", (224, 224)), bbox)
    assert result.crop is None and result.box_view is None and result.box_original is None
    assert isinstance(result.error, str) and result.error


def test_zoom_raises_only_for_a_bad_image():
    with pytest.raises(ValueError, match="PIL"):
        zoom_in(np.zeros((10, 10, 3)), (0, 0, 5, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_image_pixels"):
        zoom_in(Image.new("RGB", (100, 100)), (0, 0, 5, 5), config=ToolConfig(max_image_pixels=9999))
    with pytest.raises(ValueError, match="view_wh"):
        zoom_in(Image.new("RGB", (100, 100)), (0, 0, 5, 5), view_wh=(0, 5))


@settings(max_examples=100, deadline=None)
@given(box=st.one_of(st.tuples(*[st.floats(allow_nan=True)] * 4), st.lists(st.integers(), max_size=6), st.text()))
def test_zoom_never_raises_on_any_box(box):
    result = zoom_in(Image.new("RGB", (120, 80)), box)
    assert (result.crop is None) != (result.error is None)


def test_box_iou_hand_values():
    from mapo.agent.tools import box_iou

    # a: 10x10 at origin; b: shifted by 5 in x -> inter 5*10 = 50, union 100+100-50 = 150
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


@pytest.mark.parametrize("box", [(0, 0, 10**400, 5), (-(10**400), 0, 5, 5), [0, 0, 10**400, 10**400]])
def test_integers_too_large_for_a_float_are_an_error_result_not_an_overflow(box):
    box_view, error = validate_box(box, (120, 80))
    assert box_view is None and "finite numbers" in error and len(error) < 200
    result = zoom_in(Image.new("RGB", (120, 80)), box)
    assert result.crop is None and "finite numbers" in result.error
