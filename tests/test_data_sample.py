from __future__ import annotations

import io

import pytest
from PIL import Image

from mapo.data import Box, Sample, open_image, shuffle_options
from mapo.data.sample import probe_image, correct_first


def _png(w: int = 8, h: int = 6, color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def test_box_rejects_degenerate_and_round_trips():
    with pytest.raises(ValueError, match="x2 > x1"):
        Box(5, 0, 5, 3)
    b = Box(1, 2, 4, 6, label="red circle", caption="a red circle", is_target=True)
    assert Box.from_dict(b.to_dict()) == b
    assert b.area == 12 and b.center == (2.5, 4.0)


def test_open_image_from_bytes_path_and_pil(tmp_path):
    data = _png()
    (tmp_path / "a.png").write_bytes(data)
    for src in (data, str(tmp_path / "a.png"), Image.new("L", (8, 6))):
        im = open_image(src)
        assert im.mode == "RGB" and im.size == (8, 6)


def test_open_image_refuses_over_the_pixel_limit_before_decoding():
    with pytest.raises(ValueError, match="over the limit of 47"):
        open_image(_png(8, 6), max_pixels=47)  # 8 * 6 = 48 pixels
    assert probe_image(_png(8, 6), max_pixels=48) == (8, 6)


def test_open_image_clear_errors_for_broken_and_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot decode image"):
        open_image(b"not an image at all")
    with pytest.raises(ValueError, match="cannot decode image"):
        open_image(_png()[:40])  # truncated: header readable, pixels not
    with pytest.raises(ValueError, match="not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="path, bytes or PIL"):
        open_image(12345)


def test_load_image_names_the_sample():
    s = Sample(id="q-17", image=b"garbage", question="?")
    with pytest.raises(ValueError, match="sample q-17"):
        s.load_image()


def test_sample_validates_answer_letter_and_gives_answer_text():
    s = Sample(id="a", image=_png(), question="q", options=["red", "blue"], answer="B")
    assert s.answer_text == "blue"
    assert Sample(id="b", image=_png(), question="q", answer="free text").answer_text == "free text"
    with pytest.raises(ValueError, match="option letters"):
        Sample(id="c", image=_png(), question="q", options=["red", "blue"], answer="C")


def test_shuffle_is_keyed_by_id_and_correct_first_inverts_it():
    first = ["right", "w1", "w2", "w3"]
    options, answer = shuffle_options(first, key="sample-1")
    assert options[ord(answer) - 65] == "right"
    assert shuffle_options(first, key="sample-1") == (options, answer)
    assert correct_first(options, answer, key="sample-1") == first
    # Over many ids the correct option is not stuck at A (the V* pitfall).
    letters = [shuffle_options(first, key=f"id{i}")[1] for i in range(400)]
    counts = {c: letters.count(c) for c in "ABCD"}
    assert all(60 < n < 140 for n in counts.values()), counts


def test_correct_first_of_foreign_order_moves_answer_first():
    assert correct_first(["x", "y", "z"], "C", key="whatever-not-shuffled")[0] == "z"
