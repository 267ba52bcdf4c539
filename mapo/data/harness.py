"""How the public evaluation harnesses read an option letter, re-implemented for comparison.

mapo scores with its own rule (:func:`mapo.data.scoring.extract_choice`). Published
tables come from lmms-eval or VLMEvalKit, whose readers differ from it and from each
other; ``mapo eval --scoring lmms-eval`` (or ``vlmevalkit``) also reports the
benchmark's numbers read their way, so a run can be set beside a published table.
These are clean re-implementations of the rules as those harnesses apply them
(lmms-eval 0.7.3, VLMEvalKit's ``can_infer``), quirks included: the point is to
reproduce their numbers, not to fix them. ``docs/eval.md`` tabulates where they
differ from mapo (:func:`comparison_table`; regenerate with
``python -m mapo.data.harness``).

- **lmms-eval, V***: ``vstar_bench/utils.py:extract_answer_letter``. Upper-cases the
  response, then takes the first of: a leading letter A–D, "ANSWER/CHOICE/OPTION
  [IS] letter", "(X)", "X." / "X)" / "X]", a standalone letter, the only A–D letter
  anywhere, the first character. A response that *starts* with a word beginning
  with A–D ("Because ...") is read as that letter.
- **lmms-eval, HR-Bench** and **VLMEvalKit, V* / HR-Bench**: ``can_infer``: split
  on ``.()[],:;!*#{}`` and whitespace; if exactly one option letter occurs as a
  token, that letter (case-sensitive), else the one option whose text occurs in
  the response. When it fails both harnesses ask an LLM judge; mapo has none, so
  the response counts as unanswered (VLMEvalKit's ``exact_matching`` mode).
- **MME-RealWorld, both harnesses** (and the benchmark's own script):
  ``extract_characters_regex``. Removes a few answer prefixes (two of them run
  together by a missing comma in the original list, so "The correct option is"
  and "Best option:" are never removed), returns "" for a response of more than
  10 words without A–E, else the first capital A–E *anywhere* ("Answer: B" ->
  the "A" of "Answer"); with no capital A–E, the letter of the first "(A)".."(E)"
  that contains the lowercased response, so an empty response reads "A".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mapo.data.sample import LETTERS

HARNESSES = ("mapo", "lmms-eval", "vlmevalkit")

# ----------------------------------------------------------------------------- lmms-eval, V*

_LMMS_VSTAR = (
    re.compile(r"^([A-D])\s*[.)\]]*"),
    re.compile(r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])"),
    re.compile(r"\(([A-D])\)"),
    re.compile(r"([A-D])\s*(?:\.|\)|])"),
    re.compile(r"(?:^|\s)([A-D])(?:\s|$)"),
)


def lmms_eval_vstar(text: str) -> str | None:
    """lmms-eval 0.7.3's V* reader (``extract_answer_letter``); None when it reads nothing."""
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


def can_infer(text: str, options: Sequence[str]) -> str | None:
    """VLMEvalKit's rule-based ``can_infer``: a lone option-letter token, else a unique option text."""
    if any(refusal in text for refusal in _REFUSALS):
        return None  # VLMEvalKit's "Z": none of the options
    letters = LETTERS[: len(options)]
    tokens = text.translate(_CAN_INFER_SPLIT).split()
    present = [c for c in letters if c in tokens]
    if len(present) == 1:
        return present[0]
    if not present and "Z" in tokens:
        return None  # "Z" is the judge's "none of the options": no text match is tried
    lowered = text.lower()
    hits = [LETTERS[i] for i, o in enumerate(options) if str(o).lower() in lowered]
    return hits[0] if len(hits) == 1 else None


# ----------------------------------------------------------------------------- MME-RealWorld's script

# The original list misses two commas: Python joins the neighbouring strings, so these never match.
_MME_OFFICIAL_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is" "The correct option is",
    "Best answer:" "Best option:",
)


def mme_official(text: str) -> str | None:
    """MME-RealWorld's ``extract_characters_regex`` as lmms-eval and VLMEvalKit run it (None for "")."""
    s = text.strip()
    for prefix in _MME_OFFICIAL_PREFIXES:
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


# ----------------------------------------------------------------------------- dispatch


def harness_choice(harness: str, benchmark: str, text: str, options: Sequence[str]) -> str | None:
    """The letter ``harness`` reads from ``text`` on ``benchmark`` (vstar, hrbench, mme, synth)."""
    if harness == "mapo":
        from mapo.data.scoring import extract_choice

        return extract_choice(text, list(options) or None)
    if harness not in HARNESSES:
        raise ValueError(f"unknown scoring {harness!r}; choose from {', '.join(HARNESSES)}")
    if benchmark == "mme":
        return mme_official(text)
    if harness == "lmms-eval" and benchmark in ("vstar", "synth"):
        return lmms_eval_vstar(text)
    return can_infer(text, options)


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
)


def _cell(letter: str | None) -> str:
    return letter if letter else "–"


def comparison_table(cases: Sequence[tuple[str, str]] = TABLE_CASES, options: Sequence[str] = TABLE_OPTIONS) -> str:
    """The markdown table in ``docs/eval.md``: what each reader reads from each answer."""
    readers: list[tuple[str, Callable[[str], str | None]]] = [
        ("mapo (all benchmarks)", lambda t: harness_choice("mapo", "vstar", t, options)),
        ("lmms-eval V*", lambda t: harness_choice("lmms-eval", "vstar", t, options)),
        ("`can_infer`: VLMEvalKit V*, HR-Bench; lmms-eval HR-Bench", lambda t: can_infer(t, options)),
        ("MME-RealWorld script (lmms-eval, VLMEvalKit)", lambda t: harness_choice("lmms-eval", "mme", t, options)),
    ]
    head = "| answer | case | " + " | ".join(name for name, _ in readers) + " |"
    rule = "|" + "---|" * (len(readers) + 2)
    rows = []
    for text, why in cases:
        shown = "(empty)" if not text else f"`{text}`" if "`" not in text else f"`` {text} ``"
        rows.append(f"| {shown} | {why} | " + " | ".join(_cell(read(text)) for _, read in readers) + " |")
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    print(comparison_table())
