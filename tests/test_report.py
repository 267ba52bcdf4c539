from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mapo.cli import main
from mapo.records import PredictionRecord, TurnRecord, append_jsonl
from mapo.report import MARKER, build_report

INJECTED = (
    "<script>document.title='PWNED';var e=document.createElement('div');e.id='pwned';"
    "document.body.appendChild(e)</script><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
)


def make_eval_dir(root: Path, n: int = 6, with_injection: bool = True) -> Path:
    """A small eval directory as ``mapo eval`` writes it: images/, crops/, predictions.jsonl, metrics.json.

    Sample i has a coloured square at a known place; even samples zoom on it (valid
    crop, correct), odd ones zoom elsewhere and answer wrong; sample 1 also has an
    invalid call, sample 3 never answers, sample 0's description carries an HTML
    injection attempt when ``with_injection``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / "crops").mkdir(exist_ok=True)
    for i in range(n):
        w, h = 800, 600
        target = [100 + 60 * i, 120, 180 + 60 * i, 200]
        img = Image.new("RGB", (w, h), (230, 230, 240))
        ImageDraw.Draw(img).rectangle(target, fill=(200, 30, 30))
        # The stored image is a downscaled copy (half size); boxes stay in original pixels.
        img.resize((w // 2, h // 2)).save(root / "images" / f"{i}.png")
        correct = i % 2 == 0
        zoom = target if correct else [500, 400, 700, 560]
        crop = img.crop(zoom).resize((56, 56))
        crop.save(root / "crops" / f"{i}_0.png")
        turns = [
            TurnRecord(
                text=f'<think>find it</think><tool_call>{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": {[v / 2 for v in zoom]}}}}}</tool_call>',
                tool_call=True, bbox_view=[v / 2 for v in zoom], bbox_original=[float(v) for v in zoom],
                label="the red square", valid=True, crop=f"crops/{i}_0.png",
                description=INJECTED if (i == 0 and with_injection) else ("a red square" if correct else "grey floor"),
                semantic_score=0.35 if correct else 0.05,
            )
        ]
        if i == 1:
            turns.append(TurnRecord(text="<tool_call>{bad json</tool_call>", tool_call=True, valid=False,
                                    error="tool call is not valid JSON"))
        if i != 3:
            turns.append(TurnRecord(text=f"<answer>{'A' if correct else 'B'}</answer>"))
        rec = PredictionRecord(
            id=f"s{i}", source="synthetic", question=f"What colour is the square #{i}?", answer="A",
            prediction=None if i == 3 else ("A" if correct else "B"), correct=correct,
            finish_reason="max_turns" if i == 3 else "answer", category="colour" if i < 3 else "position",
            options=["red", "blue"], image=f"images/{i}.png", image_size=[w, h], view_size=[w // 2, h // 2],
            target_boxes=[[float(v) for v in target]], turns=turns, iou=[1.0 if correct else 0.0],
        )
        append_jsonl(root / "predictions.jsonl", rec)
    (root / "metrics.json").write_text(json.dumps({"overall": {"accuracy": 0.5}, "broken_rows": 0}))
    return root


class _DomSummary(HTMLParser):
    """Counts what a person would see: cards, images, and any element an injection would create."""

    def __init__(self):
        super().__init__()
        self.cards, self.imgs, self.ids, self.img_srcs = 0, 0, set(), []
        self.body_attrs: dict[str, str] = {}
        self.title, self._in_title, self.text = "", False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article" and "card" in (a.get("class") or ""):
            self.cards += 1
        if tag == "img":
            self.imgs += 1
            self.img_srcs.append(a.get("src"))
        if tag == "body":
            self.body_attrs = {k: v or "" for k, v in attrs}
        if a.get("id"):
            self.ids.add(a["id"])
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        self.text.append(data)


def parse_dom(text: str) -> _DomSummary:
    p = _DomSummary()
    p.feed(text)
    return p


def test_report_of_an_eval_dir(tmp_path):
    src = make_eval_dir(tmp_path / "eval")
    index = build_report(src, tmp_path / "report")
    dom = parse_dom(index.read_text())
    assert dom.cards == 6
    # Every <img> points at a file that exists inside the report directory.
    for s in dom.img_srcs:
        assert (index.parent / s).is_file(), s
        assert not s.startswith(("http", "/"))
    # 6 thumbnails + 6 crops + 3 plots (semantic scores, tool calls, IoU)
    assert dom.imgs == 15
    assert (index.parent / MARKER).is_file()
    # The injected markup is text, never an element.
    assert "pwned" not in dom.ids and dom.title.startswith("mapo report")
    assert INJECTED in "".join(dom.text)
    assert "<script>document.title" not in index.read_text()


def test_boxes_are_drawn_at_original_coordinates_scaled_to_the_thumbnail(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=1)
    index = build_report(src, tmp_path / "report", thumb_px=400)
    thumb = Image.open(index.parent / "assets" / "t00000.png").convert("RGB")
    # original 800x600 -> thumbnail 400x300 (scale 0.5); the zoom box [100,120,180,200] is drawn
    # in turn 0's colour #e6194b on its outline at x=50, y from 60 to 100.
    assert thumb.size == (400, 300)
    assert thumb.getpixel((50, 80)) == (0xE6, 0x19, 0x4B)
    assert thumb.getpixel((90, 80)) == (0xE6, 0x19, 0x4B)  # right edge x = 180 * 0.5
    assert thumb.getpixel((70, 80)) != (0xE6, 0x19, 0x4B)  # inside: the red square, not the outline


def test_cards_carry_filter_attributes(tmp_path):
    src = make_eval_dir(tmp_path / "eval")
    text = build_report(src, tmp_path / "report").read_text()
    assert 'id="card-s1" data-correct="0" data-invalid="1" data-answered="1" data-minscore="0.0500"' in text
    assert 'id="card-s3" data-correct="0" data-invalid="0" data-answered="0"' in text
    assert 'id="card-s0" data-correct="1"' in text


def test_existing_output_is_refused_unless_force(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=2)
    out = tmp_path / "report"
    build_report(src, out)
    with pytest.raises(FileExistsError, match="--force"):
        build_report(src, out)
    build_report(src, out, force=True)
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not written by mapo report"):
        build_report(src, stranger, force=True)
    assert (stranger / "thesis.tex").read_text() == "precious"


def test_cli_report_and_its_errors(tmp_path, capsys):
    src = make_eval_dir(tmp_path / "eval", n=2)
    out = tmp_path / "r"
    assert main(["report", str(src), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()
    assert main(["report", str(src), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "r3")]) == 2
    assert "neither predictions.jsonl" in capsys.readouterr().err


def test_missing_files_and_truncated_line_are_notes_not_crashes(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=3)
    (src / "images" / "1.png").unlink()
    (src / "crops" / "2_0.png").write_bytes(b"not a png")
    with open(src / "predictions.jsonl", "a") as f:
        f.write('{"id": "half')
    text = build_report(src, tmp_path / "report").read_text()
    dom = parse_dom(text)
    assert dom.cards == 3
    assert "image not available" in text
    assert "line 4 was cut off" in text
    assert "could not open crops/2_0.png" in text


def test_paths_outside_the_eval_dir_are_ignored(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=1)
    Image.new("RGB", (10, 10)).save(tmp_path / "secret.png")
    lines = (src / "predictions.jsonl").read_text().replace('"images/0.png"', '"../secret.png"')
    (src / "predictions.jsonl").write_text(lines)
    text = build_report(src, tmp_path / "report").read_text()
    assert "ignored image path outside the eval directory" in text


def test_training_run_gets_curves_of_every_numeric_key_and_its_eval(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "reward_mean": s / 10, "accuracy": 0.1 * s, "loss": {"policy": 1.0 / (s + 1)}, "tag": "x",
             "done": False} for s in range(30)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    make_eval_dir(run / "eval" / "step_2", n=1)
    make_eval_dir(run / "eval" / "step_10", n=2)
    text = build_report(run, tmp_path / "report").read_text()
    for key in ("reward_mean", "accuracy", "loss/policy"):
        assert f"training: {key}" in text
    assert "training: tag" not in text and "training: done" not in text
    assert "skipped 1 line(s)" in text
    assert parse_dom(text).cards == 2  # from eval/step_10, the latest by natural order
    assert "step_10" in text


def test_max_trajectories_caps_cards_not_statistics(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=5)
    text = build_report(src, tmp_path / "report", max_trajectories=2).read_text()
    assert parse_dom(text).cards == 2
    assert "first 2 of 5 records" in text
    assert '<td class="k">n</td><td>5</td>' in text
