from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from mapo.data import load_samples
from mapo.data.benchmarks import detect_format
from mapo.data.formats.deepeyes import read_deepeyes
from mapo.data.formats.mme import read_mme_realworld
from mapo.data.formats.hrbench import read_hrbench
from mapo.data.formats.vstar import read_vstar
from mapo.data.synth import generate, level_config
from mapo.data.benchmarks import write_samples

SMALL_HARD = level_config("hard", canvas_size=448, glyph_px=8, require_zoom=False)


@pytest.fixture(scope="module")
def samples():
    # "ink" lists options in one fixed order, not the V* reader's seeded shuffle: it must round-trip too.
    return generate(4, 0, "medium") + generate(4, 0, SMALL_HARD) + generate(4, 0, "ink")


def _png(w=16, h=12) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["vstar", "hrbench", "mme", "deepeyes"])
def test_round_trip_gives_identical_samples(tmp_path, samples, fmt):
    path = write_samples(samples, tmp_path, [fmt])[fmt]
    assert detect_format(path) == fmt
    loaded = load_samples(path)
    assert loaded.report.loaded == len(samples) and loaded.report.skipped == 0
    by_id = {s.id: s for s in loaded}
    assert set(by_id) == {s.id for s in samples}
    for a in samples:
        b = by_id[a.id]
        assert (b.question, b.options, b.answer, b.category, b.boxes) == (a.question, a.options, a.answer, a.category, a.boxes)
        assert {k: b.meta[k] for k in a.meta} == a.meta  # readers may add benchmark fields, never change ours
        assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))


def _vstar_record(tmp_path, name="sa_1", category="direct_attributes", **fields):
    folder = tmp_path / category
    folder.mkdir(parents=True, exist_ok=True)
    record = {"target_object": ["glove"], "bbox": [2, 3, 4, 5], "question": "What colour is the glove?",
              "options": ["white", "black", "red", "blue"], **fields}
    (folder / f"{name}.json").write_text(json.dumps(record))
    (folder / f"{name}.jpg").write_bytes(_png())
    return folder


def test_vstar_real_layout_is_shuffled_and_boxes_converted(tmp_path):
    for i in range(40):
        _vstar_record(tmp_path, name=f"sa_{i}")
    result = read_vstar(tmp_path)
    assert len(result) == 40
    s = result[0]
    assert s.answer_text == "white" and s.category == "direct_attributes" and s.id == "direct_attributes/sa_0"
    assert s.boxes[0].xyxy == (2, 3, 6, 8) and s.boxes[0].label == "glove" and s.boxes[0].is_target
    letters = {x.answer for x in result}
    assert len(letters) >= 3  # not always A
    assert [x.options for x in read_vstar(tmp_path)] == [x.options for x in result]  # fixed seed
    assert [x.options for x in read_vstar(tmp_path, seed=1)] != [x.options for x in result]


def test_vstar_recorded_option_order_must_match_the_files_options(tmp_path, samples):
    root = write_samples(samples[:2], tmp_path, ["vstar"])["vstar"]
    json_path = sorted(root.rglob("*.json"))[0]
    record = json.loads(json_path.read_text())
    record["mapo"]["options"] = record["mapo"]["options"][:-1] + ["an option the file does not list"]
    json_path.write_text(json.dumps(record))
    loaded = read_vstar(root)
    assert loaded.report.loaded == 1 and loaded.report.skipped == 1
    issue = loaded.report.issues[0]
    assert issue.file.endswith(json_path.name) and "mapo.options" in issue.reason and "reordering" in issue.reason
    with pytest.raises(ValueError, match=json_path.name):
        read_vstar(root, strict=True)


def test_vstar_bad_records_are_counted_with_file_and_reason(tmp_path):
    _vstar_record(tmp_path, name="good")
    folder = _vstar_record(tmp_path, name="no_question")
    record = json.loads((folder / "no_question.json").read_text())
    del record["question"]
    (folder / "no_question.json").write_text(json.dumps(record))
    _vstar_record(tmp_path, name="no_image")
    (folder / "no_image.jpg").unlink()
    _vstar_record(tmp_path, name="broken_image")
    (folder / "broken_image.jpg").write_bytes(b"\x89PNG not really")
    result = read_vstar(tmp_path)
    assert len(result) == 1 and result.report.skipped == 3
    reasons = {issue.file.rsplit("/", 1)[-1]: issue.reason for issue in result.report.issues}
    assert "missing field(s) question" in reasons["no_question.json"]
    assert "no image" in reasons["no_image.json"]
    assert "cannot decode" in reasons["broken_image.json"]
    with pytest.raises(ValueError, match=r"broken_image.json \[row 0\]: cannot decode"):
        read_vstar(tmp_path, strict=True)


def _hrbench(tmp_path, rows):
    path = tmp_path / "hr.tsv"
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image"])
        w.writerows(rows)
    return path


def test_hrbench_reads_and_reports_bad_rows(tmp_path):
    good = base64.b64encode(_png()).decode()
    big = base64.b64encode(_png(100, 100)).decode()
    path = _hrbench(tmp_path, [
        [0, "q0", "a", "b", "c", "d", "C", "single", "c0", good],
        [1, "q1", "a", "b", "c", "d", "B", "cross", "c0", "@@not base64@@"],
        [2, "q2", "a", "b", "c", "d", "A", "single", "c1", big],
        [3, "q3", "a", "b", "c", "d", "", "single", "c1", good],
        [4, "q4", "a", "b", "c", "d", "Z", "single", "c1", good],
    ])
    result = read_hrbench(path, max_pixels=5000)
    assert [s.id for s in result] == ["0"]
    s = result[0]
    assert s.answer == "C" and s.answer_text == "c" and s.category == "single" and s.meta["cycle_category"] == "c0"
    rows = {i.row: i.reason for i in result.report.issues}
    assert set(rows) == {3, 4, 5, 6}  # file rows (the header is row 1)
    assert "base64" in rows[3] and "over the limit" in rows[4] and "missing field(s) answer" in rows[5]
    assert "neither an option letter" in rows[6]
    with pytest.raises(ValueError, match=r"hr.tsv \[row 3\]: image is not valid base64"):
        read_hrbench(path, strict=True)
    assert len(read_hrbench(path, limit=1)) == 1


def test_hrbench_header_is_checked(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="missing column"):
        read_hrbench(path)


def test_mme_paths_cannot_escape_the_root(tmp_path):
    root = tmp_path / "mme"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    base = {"Text": "q", "Answer choices": ["(A) x", "(B) y", "(C) z", "(D) w", "(E) v"], "Ground truth": "E",
            "Task": "Perception", "Subtask": "OCR", "Category": "text"}
    records = [
        {"Question_id": "ok", "Image": "imgs/a.png", **base},
        {"Question_id": "up", "Image": "../secret.png", **base},
        {"Question_id": "abs", "Image": str(tmp_path / "secret.png"), **base},
        {"Question_id": "nochoice", "Image": "imgs/a.png", "Text": "q", "Ground truth": "A"},
    ]
    path = root / "mme.json"
    path.write_text(json.dumps(records))
    result = read_mme_realworld(path)
    assert [s.id for s in result] == ["ok"]
    s = result[0]
    assert s.options == ["x", "y", "z", "w", "v"] and s.answer_text == "v" and s.meta["task"] == "Perception"
    reasons = [i.reason for i in result.report.issues]
    assert "escapes the dataset root" in reasons[0] and "absolute path" in reasons[1]
    assert "Answer choices" in reasons[2]


def test_deepeyes_without_extras_parses_the_prompt(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"data_source": "vstar", "prompt": [{"role": "user", "content": "<image>\nWhat is it?\n(A) cat\n(B) dog"}],
         "images": [{"bytes": _png()}], "env_name": "visual_toolbox_v2", "ability": "vl",
         "reward_model": {"style": "rule", "ground_truth": "dog"}, "extra_info": {"index": 7}},
        {"data_source": "chart", "prompt": [{"role": "user", "content": "<image>\nA man holds what?"}],
         "images": [{"bytes": _png()}], "env_name": "x", "ability": "vl",
         "reward_model": {"style": "model", "ground_truth": "a cup"}, "extra_info": {"index": 8}},
        {"data_source": "bad", "prompt": [{"role": "user", "content": "q"}], "images": [],
         "env_name": "x", "ability": "vl", "reward_model": {"style": "rule", "ground_truth": "A"}, "extra_info": {"index": 9}},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = read_deepeyes(path)
    a, b = result
    assert (a.id, a.question, a.options, a.answer) == ("7", "What is it?", ["cat", "dog"], "B")
    assert (b.question, b.options, b.answer) == ("A man holds what?", [], "a cup")  # "A man" is not option A
    assert result.report.skipped == 1 and "images" in result.report.issues[0].reason


def test_load_samples_detects_and_explains(tmp_path, samples):
    with pytest.raises(ValueError, match="not found"):
        load_samples(tmp_path / "nope")
    write_samples(samples[:2], tmp_path / "all", ["hrbench", "deepeyes"])
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_samples(tmp_path / "all")
    assert len(load_samples(tmp_path / "all" / "hrbench")) == 2  # a folder with one data file
    with pytest.raises(ValueError, match="limit must be"):
        load_samples(tmp_path / "all" / "hrbench", limit=-1)


# ----------------------------------------------------------------------------- malformed records


def test_vstar_malformed_records_are_skipped_and_counted(tmp_path):
    _vstar_record(tmp_path, name="good")
    _vstar_record(tmp_path, name="target_int", target_object=5)
    _vstar_record(tmp_path, name="many_options", options=[f"o{i}" for i in range(30)])
    folder = _vstar_record(tmp_path, name="deep")
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = read_vstar(tmp_path)
    assert [s.id for s in result] == ["direct_attributes/good"]
    reasons = {i.file.rsplit("/", 1)[-1]: i.reason for i in result.report.issues}
    assert result.report.skipped == 3
    assert "target_object must be a name or a list" in reasons["target_int.json"]
    assert "30 options; at most 26" in reasons["many_options.json"]
    assert "nested too deeply" in reasons["deep.json"]


def test_vstar_refuses_links_out_of_its_root(tmp_path):
    root = tmp_path / "vstar"
    _vstar_record(root, name="good")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "s.jpg").write_bytes(_png())
    (outside / "s.json").write_text(json.dumps({"question": "q", "options": ["a", "b"]}))
    folder = root / "direct_attributes"
    _vstar_record(root, name="img_link")
    (folder / "img_link.jpg").unlink()
    (folder / "img_link.jpg").symlink_to(outside / "s.jpg")
    (folder / "json_link.json").symlink_to(outside / "s.json")
    (folder / "json_link.jpg").write_bytes(_png())
    (root / "relative_position").symlink_to(outside, target_is_directory=True)
    result = read_vstar(root)
    assert [s.id for s in result] == ["direct_attributes/good"]
    assert result.report.skipped == 3
    assert all("outside the dataset root" in i.reason for i in result.report.issues)


def test_hrbench_non_utf8_byte_skips_only_its_row(tmp_path):
    good = base64.b64encode(_png()).decode()
    path = _hrbench(tmp_path, [
        [0, "q0", "a", "b", "c", "d", "C", "single", "c0", good],
        [1, "q1 caf\u00e9", "a", "b", "c", "d", "B", "cross", "c0", good],
    ])
    raw = path.read_bytes().replace("caf\u00e9".encode(), b"caf\xe9")  # Latin-1 byte in UTF-8 text
    path.write_bytes(raw)
    result = read_hrbench(path)
    assert [s.id for s in result] == ["0"]
    assert [(i.row, i.reason) for i in result.report.issues] == [(3, "field(s) question hold bytes that are not UTF-8")]


def test_a_reader_keeps_going_on_any_error_type_inside_a_record(tmp_path, monkeypatch):
    """An unforeseen TypeError/IndexError in one record skips that row with its type named."""
    from mapo.data.formats import vstar as vstar_format

    for i in range(3):
        _vstar_record(tmp_path, name=f"sa_{i}")
    real = vstar_format._vstar_boxes
    monkeypatch.setattr(vstar_format, "_vstar_boxes", lambda r: [][0] if r["question"] == "boom" else real(r))
    (tmp_path / "direct_attributes" / "sa_1.json").write_text(json.dumps(
        {"question": "boom", "options": ["a", "b"], "bbox": [1, 1, 2, 2]}))
    result = read_vstar(tmp_path)
    assert len(result) == 2 and "malformed record (IndexError" in result.report.issues[0].reason
    with pytest.raises(ValueError, match=r"sa_1.json \[row 0\]: malformed record"):
        read_vstar(tmp_path, strict=True)


def test_decode_images_catches_a_truncated_file_the_header_check_passes(tmp_path):
    folder = _vstar_record(tmp_path, name="trunc")
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buf, format="PNG")
    (folder / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert len(read_vstar(tmp_path)) == 1  # the header is intact
    result = read_vstar(tmp_path, decode_images=True)
    assert len(result) == 0 and "truncated" in result.report.issues[0].reason
