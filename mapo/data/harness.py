"""How the public evaluation harnesses read an option letter, re-implemented for comparison.

mapo scores with its own rule (:func:`mapo.data.scoring.extract_choice`). Published
tables come from lmms-eval or VLMEvalKit, whose readers differ from it and from each
other; ``mapo eval --scoring lmms-eval`` (or ``vlmevalkit``) also reports the
benchmark's numbers read their way, so a run can be set beside a published table.
These are clean re-implementations of the rules as those harnesses apply them at the
commits named in :data:`FOLLOWS`, quirks included: the point is to reproduce their
numbers, not to fix them. ``docs/eval.md`` tabulates where they differ from mapo
(:func:`comparison_table`; regenerate with ``python -m mapo.data.harness``).

What each harness is given: the text of the model's last ``<answer>`` block (mapo's
protocol always answers there; a sample without one has no prediction in any mode).

- **lmms-eval, V***: ``vstar_bench/utils.py:extract_answer_letter``. Upper-cases the
  response, then takes the first of: a leading letter A–D, "ANSWER/CHOICE/OPTION
  [IS] letter", "(X)", "X." / "X)" / "X]", a standalone letter, the only A–D letter
  anywhere, the first character. A response that *starts* with a word beginning
  with A–D ("Because ...") is read as that letter.
- **lmms-eval, HR-Bench**: ``hrbench/hrbench_evals.py``'s ``can_infer`` (VLMEvalKit's
  rule as it was before August 2025): split on ``.()[],:;!*#{}`` and whitespace; if
  exactly one option letter occurs as a token, that letter (case-sensitive), else the
  one option whose text occurs in the response. When it fails the harness asks a GPT
  judge; mapo has none, so the response counts as unanswered.
- **VLMEvalKit, V* / HR-Bench**: ``vlmeval/utils/matching_util.py``'s current
  ``can_infer``: the lone letter token counts only among the last five tokens ("B is
  the one, since ..." is not read); failing that, "[correct] answer is X" anywhere,
  case-insensitive and with no word boundary after the letter (so "The answer is dark
  red" reads D); the option-text match is skipped for a response longer than twice
  the options' total length. Without a judge (``exact_matching``) a failure is wrong.
- **MME-RealWorld, both harnesses**: ``extract_characters_regex``. Removes eight answer
  prefixes, returns "" for a response of more than 10 words without A–E, else the
  first capital A–E *anywhere* ("Answer: B" -> the "A" of "Answer"); with no capital
  A–E, the letter of the first "(A)".."(E)" that contains the lowercased response, so
  an empty response reads "A". VLMEvalKit first upper-cases the ``<answer>`` block
  ("The answer is C" becomes "THE ANSWER IS C", whose first A–E is the "E" of "THE");
  lmms-eval reads the text as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mapo.data.sample import LETTERS

HARNESSES = ("mapo", "lmms-eval", "vlmevalkit")

# The upstream code each mode follows (docs/eval.md names them too).
FOLLOWS = {
    "lmms-eval": "EvolvingLMMs-Lab/lmms-eval commit 75571cf (2026-08-06, after v0.7.2)",
    "vlmevalkit": "open-compass/VLMEvalKit commit e8e78f0 (2026-08-18)",
}

# ----------------------------------------------------------------------------- lmms-eval, V*

_LMMS_VSTAR = (
    re.compile(r"^([A-D])\s*[.)\]]*"),
    re.compile(r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])"),
    re.compile(r"\(([A-D])\)"),
    re.compile(r"([A-D])\s*(?:\.|\)|])"),
    re.compile(r"(?:^|\s)([A-D])(?:\s|$)"),
)


def lmms_eval_vstar(text: str) -> str | None:
    """lmms-eval's V* reader (``extract_answer_letter``); None when it reads nothing."""
    s = text.strip().upper()
    for pattern in _LMMS_VSTAR:
        m = pattern.search(s)
        if m:
            return m.group(1)
    letters = re.findall(r"[A-D]", s)
    if len(letters) == 1:
        return letters[0]
    return s[0] if s and s[0] in "ABCD" else None


# ----------------------------------------------------------------------------- can_infer (VLMEvalKit)

_CAN_INFER_SPLIT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# VLMEvalKit's fallback for chain-of-thought answers: case-insensitive, and nothing ends the letter.
_VERBOSE_ANSWER = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.I)
_LAST_TOKENS = 5  # VLMEvalKit reads a lone letter token only among the last five tokens


def _letter_token(text: str, letters: str, *, last_only: bool) -> str | None | bool:
    """The one option letter that is a token of ``text``; False for a refusal or a lone "Z"; None otherwise."""
    if any(refusal in text for refusal in _REFUSALS):
        return False  # VLMEvalKit's "Z": none of the options
    tokens = text.translate(_CAN_INFER_SPLIT).split()
    present = [c for c in letters if c in tokens]
    if len(present) == 1:
        if not last_only or tokens.index(present[0]) > len(tokens) - _LAST_TOKENS:
            return present[0]
    elif not present and "Z" in tokens:
        return False  # "Z" is the judge's "none of the options": no text match is tried
    return None


def _option_text(text: str, options: Sequence[str]) -> str | None:
    """The one option whose text occurs in ``text`` (lowercased), else None."""
    lowered = text.lower()
    hits = [LETTERS[i] for i, o in enumerate(options) if str(o).lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def can_infer_lmms_hrbench(text: str, options: Sequence[str]) -> str | None:
    """lmms-eval's HR-Bench ``can_infer`` (VLMEvalKit's before August 2025): a lone letter token, else one option text."""
    letter = _letter_token(text, LETTERS[: len(options)], last_only=False)
    if letter is not None:
        return letter or None
    return _option_text(text, options)


def can_infer(text: str, options: Sequence[str]) -> str | None:
    """VLMEvalKit's current ``can_infer``: a lone letter token near the end, "answer is X", then one option text."""
    letters = LETTERS[: len(options)]
    letter = _letter_token(text, letters, last_only=True)
    if letter is not None:
        return letter or None
    m = _VERBOSE_ANSWER.search(text)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    if len(text) > 2 * sum(len(str(o)) for o in options):
        return None  # too long for the option-text match
    return _option_text(text, options)


# ----------------------------------------------------------------------------- MME-RealWorld

_MME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)


def mme_realworld(text: str) -> str | None:
    """MME-RealWorld's ``extract_characters_regex`` as both harnesses run it (None for "")."""
    s = text.strip()
    for prefix in _MME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search(r"[ABCDE]", s):
        return None
    m = re.search(r"[ABCDE]", s)
    if m:
        return m.group(0)
    for choice in ("(A)", "(B)", "(C)", "(D)", "(E)"):
        if s.lower() in choice.lower():  # "" is in every choice: an empty response reads "A"
            return choice[1]
    return None


def vlmevalkit_mme_realworld(text: str) -> str | None:
    """VLMEvalKit's MME-RealWorld reading: the ``<answer>`` block upper-cased, then :func:`mme_realworld`."""
    return mme_realworld(text.strip().upper())


# ----------------------------------------------------------------------------- dispatch


def harness_choice(harness: str, benchmark: str, text: str, options: Sequence[str]) -> str | None:
    """The letter ``harness`` reads from ``text`` on ``benchmark`` (vstar, hrbench, mme, synth)."""
    if harness == "mapo":
        from mapo.data.scoring import extract_choice

        return extract_choice(text, list(options) or None)
    if harness == "lmms-eval":
        if benchmark == "mme":
            return mme_realworld(text)
        return can_infer_lmms_hrbench(text, options) if benchmark == "hrbench" else lmms_eval_vstar(text)
    if harness == "vlmevalkit":
        return vlmevalkit_mme_realworld(text) if benchmark == "mme" else can_infer(text, options)
    raise ValueError(f"unknown scoring {harness!r}; choose from {', '.join(HARNESSES)}")


# ----------------------------------------------------------------------------- the comparison table

# Options of every row (V*-style, four options); MME-RealWorld's readers ignore them.
TABLE_OPTIONS = ("red", "blue", "dark red", "green")
# (answer text, why it is in the table). The mapo column is checked by tests/test_data_harness.py.
TABLE_CASES: tuple[tuple[str, str], ...] = (
    ("B", "bare letter"),
    ("(B)", "letter in parentheses"),
    ("B.", "letter and full stop"),
    ("b", "lone lowercase letter"),
    ("(b)", "lowercase in parentheses"),
    ("B) blue", "letter then option text"),
    ("B. blue", "letter then option text"),
    ("**B**", "markdown bold"),
    ("**B. blue**", "markdown bold with text"),
    ("`C`", "markdown code"),
    ("The answer is B", "answer phrase"),
    ("The answer is (B).", "answer phrase, parentheses"),
    ("Answer: B", "answer prefix"),
    ("answer: (D)", "lowercase prefix"),
    ("The correct answer is C.", "correct-answer phrase"),
    ("The best answer is: D", "best-answer phrase"),
    ("Option: D", "option prefix"),
    ("The correct option is D.", "correct-option phrase"),
    ("Choice: C", "choice prefix"),
    ("I choose B.", "letter in a sentence"),
    ("I think the answer is B because it is blue.", "answer phrase mid-sentence"),
    ("Because the sign is red, the answer is A.", "sentence starting with B-"),
    ("Based on the image, the answer is C.", "sentence starting with B-"),
    ("A dog is next to the car.", "article A"),
    ("blue", "option text"),
    ("It is dark red.", "option text inside another"),
    ("red or blue", "two option texts"),
    ("A or C", "two letters"),
    ("A is correct.", "letter opening a sentence"),
    ("E", "letter beyond the options"),
    ("", "empty answer"),
    ("I cannot tell from the image.", "no answer"),
    ("The answer is A, not B.", "answer then a second letter"),
    ("Best answer: C", "best-answer prefix"),
    ("The best option is B", "best-option phrase"),
    ("The answer is dark red", "answer phrase with option text"),
    ("B is the one, since the sign in the picture is blue", "letter early in a long answer"),
    ("Cannot determine the answer", "refusal"),
)


def _cell(letter: str | None) -> str:
    return letter if letter else "–"


def comparison_table(cases: Sequence[tuple[str, str]] = TABLE_CASES, options: Sequence[str] = TABLE_OPTIONS) -> str:
    """The markdown table in ``docs/eval.md``: what each reader reads from each answer."""
    head = "| answer | case | " + " | ".join(name for name, _, _ in TABLE_COLUMNS) + " |"
    rule = "|" + "---|" * (len(TABLE_COLUMNS) + 2)
    rows = []
    for text, why in cases:
        shown = "(empty)" if not text else f"`{text}`" if "`" not in text else f"`` {text} ``"
        cells = [_cell(harness_choice(harness, benchmark, text, options)) for _, harness, benchmark in TABLE_COLUMNS]
        rows.append(f"| {shown} | {why} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


# (column title, harness, benchmark) of the table: every distinct reader once.
TABLE_COLUMNS = (
    ("mapo (all benchmarks)", "mapo", "vstar"),
    ("lmms-eval V*", "lmms-eval", "vstar"),
    ("lmms-eval HR-Bench", "lmms-eval", "hrbench"),
    ("VLMEvalKit V*, HR-Bench", "vlmevalkit", "vstar"),
    ("lmms-eval MME-RealWorld", "lmms-eval", "mme"),
    ("VLMEvalKit MME-RealWorld", "vlmevalkit", "mme"),
)


if __name__ == "__main__":
    print(comparison_table())
