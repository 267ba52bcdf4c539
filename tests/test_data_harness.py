"""Answer extraction: mapo's rule, the harnesses' readers, and the table in docs/eval.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapo.data import Sample
from mapo.data.harness import (
    TABLE_CASES,
    TABLE_COLUMNS,
    TABLE_OPTIONS,
    can_infer,
    can_infer_lmms_hrbench,
    comparison_table,
    harness_choice,
    lmms_eval_vstar,
    mme_realworld,
    vlmevalkit_mme_realworld,
)
from mapo.data.scoring import extract_choice
from mapo.data.benchmarks import score

DOC = Path(__file__).resolve().parents[1] / "docs" / "eval.md"

# What mapo reads from every row of the table (options: red, blue, dark red, green).
MAPO_EXPECTED = {
    "B": "B", "(B)": "B", "B.": "B", "b": "B", "(b)": "B", "B) blue": "B", "B. blue": "B", "**B**": "B",
    "**B. blue**": "B", "`C`": "C", "The answer is B": "B", "The answer is (B).": "B", "Answer: B": "B",
    "answer: (D)": "D", "The correct answer is C.": "C", "The best answer is: D": "D", "Option: D": "D",
    "The correct option is D.": "D", "Choice: C": "C", "I choose B.": "B",
    "I think the answer is B because it is blue.": "B", "Because the sign is red, the answer is A.": "A",
    "Based on the image, the answer is C.": "C", "A dog is next to the car.": None, "blue": "B",
    "It is dark red.": "C", "red or blue": None, "A or C": None, "A is correct.": "A", "E": None, "": None,
    "I cannot tell from the image.": None, "The answer is A, not B.": "A", "Best answer: C": "C",
    "The best option is B": "B", "The answer is dark red": "C",
    "B is the one, since the sign in the picture is blue": "B", "Cannot determine the answer": None,
}

# What each harness reads from every row, in the order of TABLE_COLUMNS after mapo's: lmms-eval V*,
# lmms-eval HR-Bench, VLMEvalKit V*/HR-Bench, lmms-eval MME-RealWorld, VLMEvalKit MME-RealWorld ("-": nothing).
# Checked against the upstream functions themselves at the commits in mapo.data.harness.FOLLOWS.
HARNESS_EXPECTED = {
    "B": "BBBBB", "(B)": "BBBBB", "B.": "BBBBB", "b": "B--BB", "(b)": "B--BB", "B) blue": "BBBBB",
    "B. blue": "BBBBB", "**B**": "BBBBB", "**B. blue**": "BBBBB", "`C`": "C--CC",
    "The answer is B": "BBBBE",  # VLMEvalKit upper-cases MME answers: the first A-E of "THE ANSWER IS B" is E
    "The answer is (B).": "BBBBE", "Answer: B": "ABBAA", "answer: (D)": "ADDDA",
    "The correct answer is C.": "CCCCE", "The best answer is: D": "DDDDE", "Option: D": "DDDDD",
    "The correct option is D.": "DDDDE", "Choice: C": "CCCCC", "I choose B.": "BBBBC",
    "I think the answer is B because it is blue.": "BBBBE", "Because the sign is red, the answer is A.": "BAABB",
    "Based on the image, the answer is C.": "BCCBB",
    "A dog is next to the car.": "AA-AA",  # VLMEvalKit: "A" is not among the last five tokens
    "blue": "BBB-B", "It is dark red.": "D---D", "red or blue": "----E", "A or C": "A--AA", "A is correct.": "AAAAA",
    "E": "---EE", "": "---AA", "I cannot tell from the image.": "----C",
    "The answer is A, not B.": "A-AAE",  # VLMEvalKit since August 2025: "answer is A"; before: two letters, nothing
    "Best answer: C": "BCCCB",  # the prefix is stripped (lmms-eval since 2024-11, VLMEvalKit since 2026-06)
    "The best option is B": "BBBBE",
    "The answer is dark red": "D-D-E",  # VLMEvalKit's "answer is X" takes the d of "dark"
    "B is the one, since the sign in the picture is blue": "BB-BB",  # VLMEvalKit: B too early, answer too long
    "Cannot determine the answer": "C--CC",
}


def test_every_table_row_has_an_expected_mapo_reading():
    assert [text for text, _ in TABLE_CASES] == list(MAPO_EXPECTED)


@pytest.mark.parametrize("text, expected", list(MAPO_EXPECTED.items()))
def test_mapo_reads_each_table_row(text, expected):
    assert extract_choice(text, list(TABLE_OPTIONS)) == expected


def test_every_table_row_has_each_harness_reading():
    assert [text for text, _ in TABLE_CASES] == list(HARNESS_EXPECTED)


@pytest.mark.parametrize("text, expected", list(HARNESS_EXPECTED.items()))
def test_each_harness_reads_each_table_row(text, expected):
    read = "".join(harness_choice(h, b, text, TABLE_OPTIONS) or "-" for _, h, b in TABLE_COLUMNS[1:])
    assert read == expected


def test_docs_table_is_the_generated_one():
    """docs/eval.md carries the output of `python -m mapo.data.harness` verbatim."""
    assert comparison_table() in DOC.read_text(encoding="utf-8")


# Where the harnesses are right, mapo reads what they read.
@pytest.mark.parametrize("text", ["Option: D", "**D**", "The correct option is D.", "d", "(d)"])
def test_mapo_follows_the_harnesses_on_common_phrasings(text):
    assert extract_choice(text, list(TABLE_OPTIONS)) == "D" == lmms_eval_vstar(text)


# Where they are wrong, mapo keeps its reading; each departure is one case here.
def test_because_is_not_option_b():
    text = "Because the sign is red, the answer is A."
    assert lmms_eval_vstar(text) == "B" and mme_realworld(text) == "B"
    assert extract_choice(text, list(TABLE_OPTIONS)) == "A"


def test_an_empty_answer_is_no_answer():
    assert mme_realworld("") == "A"  # "" is contained in "(a)"
    assert extract_choice("", list("abcde")) is None


def test_answer_prefix_is_not_option_a():
    # MME-RealWorld's script strips no "Answer:" prefix and takes the first capital A-E: the "A" of "Answer".
    assert mme_realworld("Answer: B") == "A" and lmms_eval_vstar("Answer: B") == "A"
    assert extract_choice("Answer: B", list("abcde")) == "B"


def test_lowercase_letter_is_read_though_can_infer_does_not():
    assert can_infer("b", TABLE_OPTIONS) is None and can_infer_lmms_hrbench("b", TABLE_OPTIONS) is None
    assert extract_choice("b", list(TABLE_OPTIONS)) == "B"


def test_article_a_is_not_option_a():
    assert can_infer_lmms_hrbench("A dog is next to the car.", TABLE_OPTIONS) == "A"
    assert extract_choice("A dog is next to the car.", list(TABLE_OPTIONS)) is None


def test_mme_realworld_quirks():
    assert mme_realworld("The correct option is D") == "D"  # the prefix is stripped
    assert mme_realworld("Best option: C") == "C"  # so is "Best option:" (the upstream list has its commas now)
    assert mme_realworld("this has many words but no capital letter among the first few at all") is None
    assert mme_realworld("(c)") == "C"  # no capital: the "(C)" choice contains "(c)"
    assert vlmevalkit_mme_realworld("(c)") == "C" and vlmevalkit_mme_realworld("The answer is C") == "E"


@pytest.mark.parametrize("reader", [can_infer, can_infer_lmms_hrbench])
def test_can_infer_text_match_and_refusals(reader):
    assert reader("it is green", TABLE_OPTIONS) == "D"
    assert reader("it is dark red", TABLE_OPTIONS) is None  # "red" and "dark red" both occur
    assert reader("Z", TABLE_OPTIONS) is None
    assert reader("Cannot determine the answer, maybe B", TABLE_OPTIONS) is None


def test_can_infer_since_august_2025():
    """VLMEvalKit's current rule: a lone letter only near the end, then "answer is X", then a short option text."""
    assert can_infer("The answer is A, not B.", TABLE_OPTIONS) == "A"
    assert can_infer_lmms_hrbench("The answer is A, not B.", TABLE_OPTIONS) is None
    long_green = "looking at every object in this picture very carefully, I would say green"
    assert can_infer(long_green, TABLE_OPTIONS) is None and can_infer_lmms_hrbench(long_green, TABLE_OPTIONS) == "D"


def test_unknown_harness_is_refused():
    with pytest.raises(ValueError, match="unknown scoring 'helm'"):
        harness_choice("helm", "vstar", "B", TABLE_OPTIONS)


def _mme(i, answer, text):
    return Sample(id=f"m{i}", image=b"", question="q", options=["a", "b", "c", "d", "e"], answer=answer,
                  category="c", meta={"source": "mme", "task": "T", "subtask": "S"}), text


def test_scoring_both_ways_differs_where_the_rules_do():
    pairs = [_mme(0, "B", "Answer: B"), _mme(1, "A", ""), _mme(2, "C", "C"), _mme(3, "B", "Because of the sign")]
    samples = [s for s, _ in pairs]
    preds = {s.id: t for s, t in pairs}
    # mapo: m0 B right, m1 nothing, m2 right, m3 nothing -> 2/4.  Script: m0 A wrong, m1 A right, m2 right, m3 B right -> 3/4.
    assert score(samples, preds)["overall"] == 0.5
    assert score(samples, preds, scoring="lmms-eval")["overall"] == 0.75
    assert score(samples, preds, scoring="vlmevalkit")["overall"] == 0.75


def test_mme_best_answer_prefix_is_read_as_the_harnesses_read_it():
    s, text = _mme(0, "C", "Best answer: C")
    assert score([s], {s.id: text}, scoring="lmms-eval")["overall"] == 1.0  # the prefix is removed: C
    assert score([s], {s.id: text}, scoring="vlmevalkit")["overall"] == 0.0  # upper-cased, kept: the B of BEST


def test_vstar_scoring_by_harness():
    s = Sample(id="v", image=b"", question="q", options=list(TABLE_OPTIONS), answer="A", category="direct_attributes",
               meta={"source": "vstar"})
    text = "Because the sign is red, the answer is A."
    assert score([s], {"v": text})["overall"] == 1.0
    assert score([s], {"v": text}, scoring="lmms-eval")["overall"] == 0.0
    assert score([s], {"v": text}, scoring="vlmevalkit")["overall"] == 1.0
