from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mapo.metrics.records import (
    PredictionRecord,
    TurnRecord,
    append_jsonl,
    read_jsonl,
    record_statistics,
)


def make_record(i: int = 0, **overrides) -> PredictionRecord:
    turns = [
        TurnRecord(
            text='<think>look</think><tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 10, 50, 50]}}</tool_call>',
            tool_call=True, bbox_view=[10, 10, 50, 50], bbox_original=[20, 20, 100, 100], label="red square",
            valid=True, crop=f"crops/{i}_0.png", description="a red square", semantic_score=0.31,
        ),
        TurnRecord(text="<tool_call>{oops</tool_call>", tool_call=True, valid=False, error="invalid JSON"),
        TurnRecord(text="<answer>A</answer>"),
    ]
    fields = dict(
        id=str(i), source="synthetic", question="What colour?", answer="A", prediction="A", correct=True,
        finish_reason="answer", category="colour", options=["red", "blue"], image=f"images/{i}.png",
        image_size=[200, 200], view_size=[100, 100], target_boxes=[[20, 20, 100, 100]], turns=turns,
        iou=[1.0], meta={"seed": 3},
    )
    fields.update(overrides)
    return PredictionRecord(**fields)


def test_round_trip_through_dict_and_json():
    rec = make_record()
    again = PredictionRecord.from_json(rec.to_json())
    assert again == rec
    assert again.tool_calls == 2 and again.invalid_calls == 1 and again.semantic_scores == [0.31]


def test_from_dict_rejects_unknown_and_missing_fields():
    d = make_record().to_dict()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        PredictionRecord.from_dict({**d, "colour": 1})
    del d["finish_reason"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['finish_reason'\]"):
        PredictionRecord.from_dict(d)
    t = make_record().to_dict()
    t["turns"][0]["bbox"] = [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"record.turns\[0\]: unknown field"):
        PredictionRecord.from_dict(t)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("correct", "yes", "record.correct must be true or false"),
        ("image_size", [640], r"record.image_size must be \[width, height\]"),
        ("target_boxes", [[0, 0, 0, 5]], "x2 > x1"),
        ("target_boxes", [[0, 0, 5]], r"must be \[x1, y1, x2, y2\]"),
        ("iou", [float("nan")], "finite number"),
        ("options", "AB", "list of strings"),
        ("meta", [], "must be a mapping"),
    ],
)
def test_from_dict_rejects_bad_types_with_the_field_name(field, value, message):
    d = make_record().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        PredictionRecord.from_dict(d)


def test_a_valid_turn_needs_its_original_box():
    d = make_record().to_dict()
    d["turns"][0]["bbox_original"] = None
    with pytest.raises(ValueError, match="valid tool call needs bbox_original"):
        PredictionRecord.from_dict(d)


def test_numeric_ids_are_read_as_strings():
    d = make_record().to_dict()
    d["id"] = 17
    assert PredictionRecord.from_dict(d).id == "17"


def test_nan_score_cannot_be_written():
    rec = make_record()
    rec.turns[0].semantic_score = float("nan")
    with pytest.raises(ValueError):
        rec.to_json()


def test_append_then_read(tmp_path):
    path = tmp_path / "predictions.jsonl"
    for i in range(3):
        append_jsonl(path, make_record(i))
    result = read_jsonl(path)
    assert [r.id for r in result] == ["0", "1", "2"]
    assert result.truncated_line is None
    assert path.read_text().count("\n") == 3


def test_truncated_final_line_is_reported_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "predictions.jsonl"
    append_jsonl(path, make_record(0))
    append_jsonl(path, make_record(1))
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 40])  # killed mid-write of record 1
    result = read_jsonl(path)
    assert [r.id for r in result] == ["0"] and result.truncated_line == 2
    append_jsonl(path, make_record(2))
    result = read_jsonl(path)
    assert [r.id for r in result] == ["0", "2"] and result.truncated_line is None


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    append_jsonl(path, make_record(0))
    with open(path, "a") as f:
        f.write("{not json\n")
    append_jsonl(path, make_record(1))
    with pytest.raises(ValueError, match="line 2 is not a valid prediction record"):
        read_jsonl(path)


def test_append_is_line_atomic_when_the_writer_is_killed(tmp_path):
    """A child process appends records until killed; every complete line stays readable."""
    path = tmp_path / "predictions.jsonl"
    code = (
        "import sys, dataclasses\n"
        "from mapo.metrics.records import PredictionRecord, append_jsonl\n"
        "rec = PredictionRecord.from_json(sys.argv[2])\n"
        "i = 0\n"
        "while True:\n"
        "    append_jsonl(sys.argv[1], dataclasses.replace(rec, id=str(i))); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), make_record().to_json()])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.stat().st_size > 20_000:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the writer died on its own"
    finally:
        proc.kill()
        proc.wait()
    result = read_jsonl(path)
    assert len(result) >= 3
    assert [r.id for r in result] == [str(i) for i in range(len(result))]


def test_read_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictions file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_append_rejects_non_records(tmp_path):
    with pytest.raises(ValueError, match="must be a PredictionRecord"):
        append_jsonl(tmp_path / "p.jsonl", {"id": "1"})


def test_record_statistics_by_hand():
    a = make_record(0)  # correct, 2 calls (1 invalid), score 0.31, iou [1.0]
    b = make_record(1, correct=False, prediction=None, finish_reason="max_turns", iou=[0.2, 0.6])
    b.turns[0].semantic_score = 0.11
    c = make_record(2, target_boxes=[], iou=[], turns=[TurnRecord(text="<answer>B</answer>")], correct=False,
                    prediction="B")
    s = record_statistics([a, b, c])
    assert s["n"] == 3
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["tool_calls_per_sample"] == pytest.approx(4 / 3)  # 2 + 2 + 0
    assert s["invalid_call_rate"] == pytest.approx(2 / 4)
    assert s["no_answer_rate"] == pytest.approx(1 / 3)
    assert s["semantic_score_mean"] == pytest.approx((0.31 + 0.11) / 2)
    assert s["crop_iou_mean"] == pytest.approx((1.0 + 0.2 + 0.6) / 3)
    assert s["crop_hit_rate"] == pytest.approx(2 / 3)  # 1.0 and 0.6 >= 0.5
    assert s["first_crop_hit_rate"] == pytest.approx(1 / 2)  # a hits first, b's first is 0.2; c has no targets
    assert s["finish_reasons"] == {"answer": 2, "max_turns": 1}
    assert record_statistics([])["accuracy"] is None
