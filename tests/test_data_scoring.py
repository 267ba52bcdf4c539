from __future__ import annotations

import math

import pytest

from mapo.data import Sample
from mapo.data.scoring import extract_choice, score_hrbench, score_mme_realworld, score_vstar
from mapo.data.benchmarks import score

OPTS = ["red", "blue", "dark red", "green"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) blue", "B"),
        ("The answer is B", "B"),
        ("answer: (D)", "D"),
        ("<think>hmm A or C</think><answer>C</answer>", "C"),
        ("blue", "B"),
        ("It is dark red.", "C"),  # "red" is inside the longer hit "dark red"
        ("I pick (D) because", "D"),
        ("A dog sits there", None),  # a sentence starting with "A" is not a choice
        ("E", None),  # beyond the 4 options
        ("red or blue", None),  # ambiguous option text
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTS) == expected


def _s(i, answer, category="", **meta):
    return Sample(id=f"s{i}", image=b"", question="q", options=["a", "b", "c", "d"], answer=answer, category=category, meta=meta)


def test_vstar_per_category_and_overall_by_hand():
    samples = [_s(0, "A", "direct_attributes"), _s(1, "B", "direct_attributes"), _s(2, "C", "relative_position")]
    preds = {"s0": "A", "s1": "C", "s2": "(C)"}
    r = score_vstar(samples, preds)
    # direct: 1 of 2 right; relative: 1 of 1; overall 2 of 3.
    assert r["per_category"] == {"direct_attributes": 0.5, "relative_position": 1.0}
    assert r["overall"] == pytest.approx(2 / 3) and r["missing"] == 0


def test_missing_prediction_counts_wrong():
    r = score_vstar([_s(0, "A", "x"), _s(1, "A", "x")], {"s0": "A"})
    assert r["overall"] == 0.5 and r["missing"] == 1


def test_hrbench_averages_per_cycle_by_hand():
    samples = [
        _s(0, "A", "single", cycle_category="c0"),
        _s(1, "B", "cross", cycle_category="c0"),
        _s(2, "A", "single", cycle_category="c1"),
        _s(3, "B", "single", cycle_category="c1"),
        _s(4, "C", "cross", cycle_category="c1"),
    ]
    preds = {"s0": "A", "s1": "A", "s2": "A", "s3": "B", "s4": "A"}
    r = score_hrbench(samples, preds)
    # cycle c0: all 1/2, single 1/1, cross 0/1.  cycle c1: all 2/3, single 2/2, cross 0/1.
    assert r["per_cycle"]["c0"] == {"all": 0.5, "single": 1.0, "cross": 0.0}
    assert r["per_cycle"]["c1"]["all"] == pytest.approx(2 / 3)
    assert r["overall"] == pytest.approx((0.5 + 2 / 3) / 2)  # 0.58333, not the micro 3/5
    assert r["per_category"] == {"cross": 0.0, "single": 1.0}


def test_mme_groups_by_hand():
    samples = [
        _s(0, "A", "OCR", task="Perception", subtask="text"),
        _s(1, "B", "OCR", task="Perception", subtask="text"),
        _s(2, "C", "Chart", task="Reasoning", subtask="bars"),
        _s(3, "D", "Chart", task="Reasoning", subtask="bars"),
    ]
    preds = {"s0": "The answer is A", "s1": "Because", "s2": "c", "s3": "(D)"}
    r = score_mme_realworld(samples, preds)
    # s0 right; s1 "Because" -> no letter (the official script reads B), wrong; s2 lone "c" -> C right; s3 right.
    assert r["overall"] == 0.75
    assert r["per_task"] == {"Perception": 0.5, "Reasoning": 1.0}
    assert r["per_subtask"] == {"Perception/text": 0.5, "Reasoning/bars": 1.0}


def test_score_dispatches_on_source_and_rejects_mixtures():
    a, b = _s(0, "A", "x", source="vstar"), _s(1, "A", "x", source="mme")
    assert score([a], {"s0": "A"})["overall"] == 1.0
    with pytest.raises(ValueError, match="several sources"):
        score([a, b], {})
    with pytest.raises(ValueError, match="predictions must map"):
        score_vstar([a], ["A"])
    assert math.isnan(score_vstar([], {})["overall"])


@pytest.mark.parametrize(
    "benchmark, text, expected",
    [("vstar", "The answer is (C).", "C"), ("mme", "Answer: B", "B"), ("mme", "no idea at all", None)],
)
def test_eval_verdict_follows_the_official_rule(benchmark, text, expected):
    """mapo eval's per-sample verdict and the official scorer read the same letter from a response."""
    from mapo.data.scoring import predicted_choice
    from mapo.eval import judge

    sample = Sample(id="s", image=b"", question="q", options=["a", "b", "c", "d"], answer=expected or "A", category="c")
    assert predicted_choice(sample, text, benchmark) == expected
    letter, correct = judge(sample, text, benchmark)
    assert letter == expected and correct == (expected is not None)
    official = score([sample], {"s": text}, benchmark)["overall"]
    assert official == (1.0 if expected is not None else 0.0)
