from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mapo.cli import main
from mapo.metrics.records import PredictionRecord, TurnRecord, append_jsonl
from mapo.report import CHOSEN_CURVES as CHOSEN_TITLES
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


class _Layout(HTMLParser):
    """Where things sit: the order of top-level blocks (sections, collapsed ``<details>``, the card list),
    the metric keys printed in small print inside each, its text, whether a ``<details>`` is open, and
    the cells of the before/after table."""

    BLOCKS = ("section", "details", "article")

    def __init__(self):
        super().__init__()
        self.order: list[str] = []
        self.keys: dict[str, list[str]] = {}
        self.text: dict[str, str] = {}
        self.open: dict[str, bool] = {}
        self.rows: list[list[str]] = []
        self._stack: list[str] = []
        self._in_key = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in self.BLOCKS or (tag == "div" and a.get("id") == "cards"):
            name = a.get("id") or tag
            if not self._stack and tag != "article":
                self.order.append(name)
            if tag == "details" and not self._stack:
                self.open[name] = "open" in a
            self._stack.append(name)
        self._in_key = tag == "span" and a.get("class") == "key"
        if tag == "tr" and self._where() == "summary":
            self.rows.append([])
        if tag in ("td", "th") and self._where() == "summary":
            self.rows[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag in self.BLOCKS or (tag == "div" and self._stack == ["cards"]):
            self._stack.pop()
        if tag == "span":
            self._in_key = False
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        where = self._where()
        self.text[where] = self.text.get(where, "") + data
        if self._in_key:
            self.keys.setdefault(where, []).append(data)
        if self._in_cell and self.rows:
            self.rows[-1][-1] += data.strip()

    def _where(self) -> str:
        return self._stack[0] if self._stack else "page"


def layout(text: str) -> _Layout:
    p = _Layout()
    p.feed(text)
    return p


CHOSEN = ["reward_mean", "accuracy", "hit_rate", "semantic_mean", "kl", "entropy", "eval/accuracy"]


def make_run_dir(root: Path, steps: int = 30) -> Path:
    """A training run as ``mapo train`` writes it: metrics.jsonl (every chosen key and then some,
    deliberately not in page order, eval/accuracy every 10 steps), config.yaml, eval/step_*."""
    root.mkdir(parents=True)
    rows = []
    for s in range(steps):
        row = {"step": s, "entropy": 1.0 - s / 100, "time_step": 3.0, "ppo_kl": 1e-3, "kl": s / 1000,
               "semantic_mean": -0.5 + s / 60, "hit_rate": s / 30, "accuracy": 0.1 * s / 3, "reward_mean": s / 10,
               "adv_mean": 0.0, "loss": {"policy": 1.0 / (s + 1)}, "tag": "x", "done": False}
        rows.append(row)
        if s % 10 == 9:
            rows.append({"step": s, "eval/accuracy": 0.3 + s / 100, "eval/n": 8.0})
    (root / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    (root / "config.yaml").write_text("steps: 30\nadvantage:\n  estimator: mapo\nrollout:\n  group_size: 8\n")
    return root


def test_run_page_leads_with_summary_then_chosen_curves_then_collapsed_sections(tmp_path):
    run = make_run_dir(tmp_path / "run")
    make_eval_dir(run / "eval" / "step_2", n=1)
    make_eval_dir(run / "eval" / "step_10", n=2)
    text = build_report(run, tmp_path / "report").read_text()
    page = layout(text)
    # Summary, then the chosen curves, then everything else collapsed, then the cards.
    assert page.order[:-1] == ["summary", "curves", "all-metrics", "evaluation", "config", "filters"]
    assert page.order[-1] == "cards"
    assert page.open == {"all-metrics": False, "evaluation": False, "config": False}
    # The chosen curves in the stated order, each titled in words with its key in small print;
    # kl is logged, so ppo_kl is not among them.
    assert page.keys["curves"] == CHOSEN
    assert "Reward, mean over sampled rollouts" in page.text["curves"]
    assert text.count("<figure>", text.index('id="curves"'), text.index('id="all-metrics"')) == len(CHOSEN)
    # Every other numeric key is in the closed block, alphabetically; non-numeric keys nowhere.
    others = ["adv_mean", "eval/n", "loss/policy", "ppo_kl", "time_step"]
    assert "All 12 logged metrics" in page.text["all-metrics"]
    collapsed = text[text.index('id="all-metrics"'):text.index('id="evaluation"')]
    assert [a.split('"')[0] for a in collapsed.split('alt="')[1:]] == others
    assert 'alt="tag"' not in text and 'alt="done"' not in text
    # Without before/after evaluations the summary gives the last logged value of each key metric.
    assert "Key metrics at their last logged step" in page.text["summary"]
    assert [r[0] for r in page.rows[1:]] == [f"{CHOSEN_TITLES[k]}{k}" for k in CHOSEN]
    assert page.rows[1][1:] == ["2.9", "step 29"]  # reward_mean = s / 10 at s = 29
    assert page.rows[-1][1:] == ["0.59", "step 29"]  # eval/accuracy = 0.3 + 29 / 100
    # The config is only in its closed block.
    assert "estimator" in page.text["config"] and "group_size" in page.text["config"]
    assert all("group_size" not in t for where, t in page.text.items() if where != "config")
    assert "skipped 1 line(s)" in text
    assert parse_dom(text).cards == 2  # from eval/step_10, the latest by natural order
    assert "step_10" in text


def test_ppo_kl_stands_in_for_kl_when_no_reference_is_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "ppo_kl": 1e-3 * s, "reward_mean": 0.1, "loss": 1.0} for s in range(3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    page = layout(build_report(run, tmp_path / "report").read_text())
    assert page.keys["curves"] == ["reward_mean", "ppo_kl"]
    assert "All 3 logged metrics" in page.text["all-metrics"]
    assert "config" not in page.order  # no config.yaml, no eval: no empty block


def test_markup_in_metric_keys_and_config_is_text(tmp_path):
    run = make_run_dir(tmp_path / "run", steps=2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, "<img src=x onerror=alert(1)>": 1.0}) + "\n")
    with open(run / "config.yaml", "a") as f:
        f.write("note: '<script>alert(2)</script>'\n")
    text = build_report(run, tmp_path / "report").read_text()
    assert "<img src=x" not in text and "<script>alert" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&lt;script&gt;alert(2)&lt;/script&gt;" in text


def _tools(acc, first_hit, iou, calls, sem, n=40):
    return {"tools": {"n": n, "accuracy": acc, "first_crop_hit_rate": first_hit, "crop_iou_mean": iou,
                      "tool_calls_per_sample": calls, "semantic_score_mean": sem, "crop_hit_rate": 0.5,
                      "invalid_call_rate": 0.0, "no_answer_rate": 0.0, "finish_reasons": {"answer": n}},
            "run": {"config": {"max_turns": 3}}}


def make_demo_dir(root: Path) -> Path:
    """What ``mapo demo`` leaves (mapo.pipelines.demo.run_pipeline): rl/ (the run, rl/eval/ its final held-out
    eval) next to eval_before/ (the warm start's eval of the same held-out set)."""
    make_run_dir(root / "rl")
    make_eval_dir(root / "rl" / "eval", n=2)
    (root / "rl" / "eval" / "metrics.json").write_text(json.dumps(_tools(0.5, 0.6, 0.55, 1.5, 0.125)))
    make_eval_dir(root / "eval_before", n=2)
    (root / "eval_before" / "metrics.json").write_text(json.dumps(_tools(0.25, 0.2, None, 1.0, -0.5)))
    return root


@pytest.mark.parametrize("which", ["demo dir", "its rl run (as the demo builds it)"])
def test_demo_report_opens_with_the_before_after_table(tmp_path, which):
    demo = make_demo_dir(tmp_path / "demo")
    src = demo if which == "demo dir" else demo / "rl"
    text = build_report(src, tmp_path / "report").read_text()
    page = layout(text)
    assert page.order[:3] == ["summary", "curves", "all-metrics"]
    assert "40 samples" in page.text["summary"]
    # metric (label + meaning) | before | after | change, from the two metrics.json files
    assert page.rows[0] == ["metric", "before RL", "after RL", "change"]
    assert [r[0] for r in page.rows[1:]] == [
        "accuracyanswer correct (greedy, held-out)",
        "first-zoom hit ratesamples whose first valid crop hits a target",
        "crop IoUmean IoU of valid crops with the nearest target box",
        "tool calls / sampleexecuted tool calls per sample",
        "semantic scoremean verifier cosine of description vs crop (s_missing = -1)",
    ]
    assert [r[1:] for r in page.rows[1:]] == [
        ["0.250", "0.500", "+0.250"],
        ["0.200", "0.600", "+0.400"],
        ["n/a", "0.550", "n/a"],  # no valid crop before: IoU undefined, so is the change
        ["1.000", "1.500", "+0.500"],
        ["-0.500", "0.125", "+0.625"],
    ]
    # 2 SE of a difference of proportions on n=40: 2·sqrt((.25·.75 + .5·.5)/40) = 0.209 < 0.25
    assert "RL improved held-out accuracy by +0.250" in page.text["summary"]
    assert "Key metrics at their last logged" not in text
    # The evaluation's own config joins the run's config in the closed block.
    assert "max_turns" in page.text["config"] and "max_turns" not in page.text["evaluation"]


def test_demo_report_leads_with_the_test_set_when_the_demo_has_one(tmp_path):
    demo = make_demo_dir(tmp_path / "demo")
    assert "Validation set, 40 samples" in layout(build_report(demo, tmp_path / "r1").read_text()).text["summary"]
    for name, acc in (("eval_before_test", 0.3), ("rl/eval_test", 0.35)):
        (demo / name).mkdir(parents=True)
        (demo / name / "metrics.json").write_text(json.dumps(_tools(acc, 0.2, 0.3, 1.0, 0.0, n=400)))
    page = layout(build_report(demo, tmp_path / "r2").read_text())
    assert "Test set, 400 samples" in page.text["summary"] and "eval_before_test/" in page.text["summary"]
    assert page.rows[1][1:] == ["0.300", "0.350", "+0.050"]


def test_demo_without_its_after_eval_says_so_and_shows_the_last_step(tmp_path):
    demo = make_demo_dir(tmp_path / "demo")
    (demo / "rl" / "eval" / "metrics.json").unlink()
    page = layout(build_report(demo, tmp_path / "report").read_text())
    assert "no before/after table" in page.text["page"]
    assert "Key metrics at their last logged step" in page.text["summary"]


def test_eval_dir_keeps_statistics_first_and_collapses_its_config(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=2)
    metrics = {"overall": {"accuracy": 0.5}, "run": {"config": {"max_turns": 3, "temperature": 0.0}}}
    (src / "metrics.json").write_text(json.dumps(metrics))
    page = layout(build_report(src, tmp_path / "report").read_text())
    assert page.order == ["summary", "plots", "config", "filters", "cards"]
    assert page.open == {"config": False}
    assert "overall/accuracy" in page.text["summary"] and "max_turns" not in page.text["summary"]
    assert "run/config/max_turns" not in page.text["config"] and "config/max_turns" in page.text["config"]


def test_max_trajectories_caps_cards_not_statistics(tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=5)
    text = build_report(src, tmp_path / "report", max_trajectories=2).read_text()
    assert parse_dom(text).cards == 2
    assert "first 2 of 5 records" in text
    assert '<td class="k">n</td><td>5</td>' in text
