"""Answer extraction: mapo's rule, the harnesses' readers, and the table in docs/eval.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapo.data import Sample
from mapo.data.harness import TABLE_CASES, TABLE_OPTIONS, can_infer, comparison_table, harness_choice, lmms_eval_vstar, mme_official
from mapo.data.scoring import extract_choice, score

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
    "I cannot tell from the image.": None, "The answer is A, not B.": "A",
}


def test_every_table_row_has_an_expected_mapo_reading():
    assert [text for text, _ in TABLE_CASES] == list(MAPO_EXPECTED)


@pytest.mark.parametrize("text, expected", list(MAPO_EXPECTED.items()))
def test_mapo_reads_each_table_row(text, expected):
    assert extract_choice(text, list(TABLE_OPTIONS)) == expected


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
    assert lmms_eval_vstar(text) == "B" and mme_official(text) == "B"
    assert extract_choice(text, list(TABLE_OPTIONS)) == "A"


def test_an_empty_answer_is_no_answer():
    assert mme_official("") == "A"  # "" is contained in "(a)"
    assert extract_choice("", list("abcde")) is None


def test_answer_prefix_is_not_option_a():
    # MME-RealWorld's script strips no "Answer:" prefix and takes the first capital A-E: the "A" of "Answer".
    assert mme_official("Answer: B") == "A" and lmms_eval_vstar("Answer: B") == "A"
    assert extract_choice("Answer: B", list("abcde")) == "B"


def test_lowercase_letter_is_read_though_can_infer_does_not():
    assert can_infer("b", TABLE_OPTIONS) is None
    assert extract_choice("b", list(TABLE_OPTIONS)) == "B"


def test_article_a_is_not_option_a():
    assert can_infer("A dog is next to the car.", TABLE_OPTIONS) == "A"
    assert extract_choice("A dog is next to the car.", list(TABLE_OPTIONS)) is None


def test_mme_official_quirks():
    assert mme_official("The correct option is D") == "D"  # "The" has no A-E capital
    assert mme_official("Best option: C") == "B"  # "Best option:" is never stripped (missing comma upstream)
    assert mme_official("this has many words but no capital letter among the first few at all") is None
    assert mme_official("(c)") == "C"  # no capital: the "(C)" choice contains "(c)"


def test_can_infer_text_match_and_refusals():
    assert can_infer("it is green", TABLE_OPTIONS) == "D"
    assert can_infer("it is dark red", TABLE_OPTIONS) is None  # "red" and "dark red" both occur
    assert can_infer("Z", TABLE_OPTIONS) is None
    assert can_infer("Cannot determine the answer, maybe B", TABLE_OPTIONS) is None


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


def test_vstar_scoring_by_harness():
    s = Sample(id="v", image=b"", question="q", options=list(TABLE_OPTIONS), answer="A", category="direct_attributes",
               meta={"source": "vstar"})
    text = "Because the sign is red, the answer is A."
    assert score([s], {"v": text})["overall"] == 1.0
    assert score([s], {"v": text}, scoring="lmms-eval")["overall"] == 0.0
    assert score([s], {"v": text}, scoring="vlmevalkit")["overall"] == 1.0
