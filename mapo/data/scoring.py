"""Answer extraction and each benchmark's official aggregation.

Extraction (:func:`extract_choice`) turns a model's text into an option letter.
It follows VLMEvalKit's rule-based ``can_infer`` where that is right and keeps
its own reading where the harnesses are wrong (``docs/eval.md`` tabulates every
difference; :mod:`mapo.data.harness` re-implements the harnesses' readers for
``mapo eval --scoring``). In order:

1. the last ``<answer>`` block if present; markdown emphasis (``**B**``, `` `B` ``) dropped;
2. the whole answer is one letter, in any case: "B", "(b)", "B.", "[C]";
3. it starts with a letter and a delimiter: "B) blue", "B. blue", "(B) blue";
4. an answer phrase: "The answer is B", "Answer: (B)", "the best answer is: D";
   then an option phrase: "Option: D", "The correct option is D", "Choice: C";
5. the option's text (only when exactly one option's text appears);
6. exactly one letter in parentheses, "I pick (D) because ...";
7. exactly one option letter standing alone as a word ("I choose B."), where an
   "A" that opens a sentence before a lower-case word ("A dog is ...") is the article.

The same rule reads every benchmark, MME-RealWorld included. It departs from
the harnesses on purpose in two places: a sentence that starts with "Because"
or "Based" is not read as B (lmms-eval's V* reader and MME-RealWorld's script
do), and an empty answer is no answer (MME-RealWorld's script reads "A").
MME-RealWorld's own reader is :func:`mapo.data.harness.mme_realworld`
(``--scoring lmms-eval``; ``vlmevalkit`` upper-cases the answer first).

Aggregation, per benchmark:

- V*: accuracy per category (``direct_attributes``, ``relative_position``) and
  overall over all questions (micro average; 115 + 76 questions in V*).
- HR-Bench: within each ``cycle_category`` the accuracy over all questions and
  per ``category`` (single / cross); each is then averaged over the cycles,
  as VLMEvalKit's ``report_acc_hrbench`` does. A category absent from a cycle
  is averaged over the cycles where it appears (VLMEvalKit divides by all
  cycles; the two agree on the real data, where every cycle has both).
- MME-RealWorld: accuracy per ``Task``, per ``Task/Subtask``, per ``Category``,
  and overall over all questions.

``predictions`` map sample id -> the model's raw output; a sample without a
prediction counts as wrong and is counted in ``missing``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mapo.data.sample import LETTERS, Sample

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_MARKDOWN = re.compile(r"\*\*|__|[*`#]")
_LONE = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:]?")
_LEADING = re.compile(r"^[(\[]?([A-Z])(?:[)\]]|[.:)])(?:\s|$)")
# The letter group takes lower case too, so that "the answer is a red car" is caught and then
# refused by the `valid` check rather than matching a later capital.
_PHRASES = (
    re.compile(r"answer\s*(?:is|:|-|=)\s*:?\s*(?:option\s*|choice\s*)?[(\[]?([A-Za-z])[)\]]?(?![A-Za-z])", re.I),
    re.compile(r"(?:option|choice)\s*(?:is\s*:?|:|-|=)?\s*[(\[]?([A-Za-z])[)\]]?(?![A-Za-z])", re.I),
)
_PAREN = re.compile(r"\(([A-Z])\)")
_WORD = re.compile(r"[A-Za-z]+")
_PUNCT = re.compile(r"[^\w\s]")


def extract_choice(text: str, options: list[str] | None = None) -> str | None:
    """The option letter ``text`` picks, or None. With ``options``, letters beyond them are ignored.

    Examples: "B", "b", "(B)", "**B**", "B) blue", "The answer is B", "Option: D",
    "I choose B.", "<answer>B</answer>", and, given options, the option text "blue".
    """
    if not isinstance(text, str):
        return None
    valid = LETTERS[: len(options)] if options else LETTERS
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        text = blocks[-1]  # the final answer block wins
    text = _MARKDOWN.sub("", text).strip()
    m = _LONE.fullmatch(text)
    if m:  # the whole answer is one letter: its case carries no meaning
        return m.group(1).upper() if m.group(1).upper() in valid else None
    m = _LEADING.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    for pattern in _PHRASES:
        m = pattern.search(text)
        if m:
            return m.group(1) if m.group(1) in valid else None
    if options:
        letter = _match_option_text(text, options)
        if letter is not None:
            return letter
    parens = {m for m in _PAREN.findall(text) if m in valid}
    if len(parens) == 1:
        return parens.pop()
    return _lone_letter_word(text, valid)


def _lone_letter_word(text: str, valid: str) -> str | None:
    """The one option letter that stands alone as a word (``can_infer``'s rule), else None.

    An "A" that opens a sentence before a lower-case word ("A dog is ...") is the article,
    unless the word is one that follows a letter ("A is right", "A or C").
    """
    words = list(_WORD.finditer(text))
    found = set()
    for i, m in enumerate(words):
        w = m.group(0)
        if len(w) != 1 or w not in valid:
            continue
        if w == "A" and _is_article(text, words, i):
            continue
        found.add(w)
    return found.pop() if len(found) == 1 else None


_AFTER_LETTER = frozenset({"is", "was", "seems", "looks", "appears", "or", "and"})


def _is_article(text: str, words: list[re.Match], i: int) -> bool:
    opens_sentence = not text[: words[i].start()].strip() or text[: words[i].start()].rstrip()[-1] in ".!?"
    nxt = words[i + 1].group(0) if i + 1 < len(words) else ""
    return opens_sentence and nxt[:1].islower() and nxt not in _AFTER_LETTER


def _normalise(s: str) -> str:
    return " ".join(_PUNCT.sub(" ", s.lower()).split())


def _match_option_text(text: str, options: list[str]) -> str | None:
    norm = _normalise(text)
    if not norm:
        return None
    for i, option in enumerate(options):
        if norm == _normalise(option):
            return LETTERS[i]
    padded = f" {norm} "
    hits = [i for i, o in enumerate(options) if _normalise(o) and f" {_normalise(o)} " in padded]
    # Drop options contained in a longer hit ("red" inside "dark red").
    hits = [i for i in hits if not any(j != i and _normalise(options[i]) in _normalise(options[j]) for j in hits)]
    return LETTERS[hits[0]] if len(hits) == 1 else None


# ----------------------------------------------------------------------------- aggregation


def _judge(
    samples: Iterable[Sample], predictions: Mapping[str, str], extract: Callable[[Sample, str], str | None]
) -> tuple[list[tuple[Sample, bool]], int]:
    if not isinstance(predictions, Mapping):
        raise ValueError(f"predictions must map sample id -> output text, got {type(predictions).__name__}")
    judged, missing = [], 0
    for s in samples:
        if s.id not in predictions:
            missing += 1
            judged.append((s, False))
            continue
        judged.append((s, extract(s, predictions[s.id]) == s.answer))
    return judged, missing


def _accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _grouped(judged: list[tuple[Sample, bool]], key: Callable[[Sample], str]) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s, ok in judged:
        groups[key(s)].append(ok)
    return {k: _accuracy(v) for k, v in sorted(groups.items())}


def predicted_choice(sample: Sample, text: str, benchmark: str, scoring: str = "mapo") -> str | None:
    """The option letter read from ``text`` (None: no letter found).

    ``scoring`` is ``mapo`` (:func:`extract_choice`, the rule of every ``correct`` flag mapo
    writes), or ``lmms-eval`` / ``vlmevalkit`` to read it as that harness reads ``benchmark``
    (:mod:`mapo.data.harness`). The scorers below and ``mapo eval``'s per-sample verdict both
    call this, so a record's ``correct`` flag always agrees with the ``mapo`` score.
    """
    from mapo.data.harness import harness_choice

    return harness_choice(scoring, benchmark, text, sample.options)


def _chooser(benchmark: str, scoring: str) -> Callable[[Sample, str], str | None]:
    return lambda s, text: predicted_choice(s, text, benchmark, scoring)


def score_vstar(samples: Iterable[Sample], predictions: Mapping[str, str], scoring: str = "mapo") -> dict[str, Any]:
    """V*: ``overall`` (all questions), ``per_category``, ``n``, ``missing``."""
    judged, missing = _judge(samples, predictions, _chooser("vstar", scoring))
    return {
        "overall": _accuracy([ok for _, ok in judged]),
        "per_category": _grouped(judged, lambda s: s.category),
        "n": len(judged),
        "missing": missing,
    }


def score_hrbench(samples: Iterable[Sample], predictions: Mapping[str, str], scoring: str = "mapo") -> dict[str, Any]:
    """HR-Bench: per cycle accuracy (all, per category), averaged over cycles.

    Returns ``overall`` (mean over cycles of the all-question accuracy),
    ``per_category`` (mean over cycles of each category's accuracy),
    ``per_cycle`` ({cycle: {"all": acc, category: acc}}), ``n``, ``missing``.
    """
    judged, missing = _judge(samples, predictions, _chooser("hrbench", scoring))
    by_cycle: dict[str, list[tuple[Sample, bool]]] = defaultdict(list)
    for s, ok in judged:
        by_cycle[str(s.meta.get("cycle_category", ""))].append((s, ok))
    per_cycle = {}
    for cycle, items in sorted(by_cycle.items()):
        per_cycle[cycle] = {"all": _accuracy([ok for _, ok in items]), **_grouped(items, lambda s: s.category)}
    categories = sorted({k for accs in per_cycle.values() for k in accs if k != "all"})
    return {
        "overall": _mean([accs["all"] for accs in per_cycle.values()]),
        "per_category": {c: _mean([accs[c] for accs in per_cycle.values() if c in accs]) for c in categories},
        "per_cycle": per_cycle,
        "n": len(judged),
        "missing": missing,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def score_mme_realworld(samples: Iterable[Sample], predictions: Mapping[str, str], scoring: str = "mapo") -> dict[str, Any]:
    """MME-RealWorld: ``overall``, ``per_task``, ``per_subtask`` (``task/subtask``), ``per_category``."""
    judged, missing = _judge(samples, predictions, _chooser("mme", scoring))
    return {
        "overall": _accuracy([ok for _, ok in judged]),
        "per_task": _grouped(judged, lambda s: str(s.meta.get("task", ""))),
        "per_subtask": _grouped(judged, lambda s: f"{s.meta.get('task', '')}/{s.meta.get('subtask', '')}"),
        "per_category": _grouped(judged, lambda s: s.category),
        "n": len(judged),
        "missing": missing,
    }


def score_synth(samples: Iterable[Sample], predictions: Mapping[str, str], scoring: str = "mapo") -> dict[str, Any]:
    """The synthetic task mirrors V*'s categories: V*'s aggregation, read as V* is read."""
    return score_vstar(samples, predictions, scoring)
