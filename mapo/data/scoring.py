"""Answer extraction and each benchmark's official aggregation.

Extraction (:func:`extract_choice`) turns a model's text into an option letter:
an ``<answer>`` block if present, then "B", "(B)", "B.", "B) ...", "The answer
is B", "Answer: (B)", and finally the option's text (only when exactly one
option's text appears). MME-RealWorld uses its own rule (:func:`mme_extract`):
strip the usual answer prefixes, then the first capital A–E anywhere.

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
_BARE = re.compile(r"\(?([A-Z])\)?[.:)]?")
_LEADING = re.compile(r"^\(?([A-Z])(?:\)|[.:)])(?:\s|$)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(?:option\s*)?\(?([A-Z])\)?(?![A-Za-z])", re.I)
_PAREN = re.compile(r"\(([A-Z])\)")
_PUNCT = re.compile(r"[^\w\s]")


def extract_choice(text: str, options: list[str] | None = None) -> str | None:
    """The option letter ``text`` picks, or None. With ``options``, letters beyond them are ignored.

    Examples: "B", "(B)", "B.", "B) blue", "The answer is B", "<answer>B</answer>",
    and, given options, the option text "blue".
    """
    if not isinstance(text, str):
        return None
    valid = LETTERS[: len(options)] if options else LETTERS
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        text = blocks[-1]  # the final answer block wins
    text = text.strip()
    for pattern, where in ((_BARE, "full"), (_LEADING, "start"), (_ANSWER_IS, "search")):
        m = pattern.fullmatch(text) if where == "full" else pattern.match(text) if where == "start" else pattern.search(text)
        if m and m.group(1) in valid:
            return m.group(1)
    if options:
        letter = _match_option_text(text, options)
        if letter is not None:
            return letter
    parens = {m for m in _PAREN.findall(text) if m in valid}
    if len(parens) == 1:
        return parens.pop()
    return None


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


_MME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
    "Answer:",
    "Option:",
)


def mme_extract(text: str) -> str:
    """MME-RealWorld's rule: drop answer prefixes, then the first capital A–E anywhere ("" if none).

    Like the official script, a long response (over 10 words) with no A–E
    letter gives "" and a word such as "Because" yields "B": the rule is the
    benchmark's, kept for comparable numbers.
    """
    if not isinstance(text, str):
        return ""
    s = text.strip()
    for prefix in _MME_PREFIXES:
        s = s.replace(prefix, "")
    m = re.search(r"[ABCDE]", s)
    return m.group(0) if m else ""


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


def predicted_choice(sample: Sample, text: str, benchmark: str) -> str | None:
    """The option letter ``benchmark``'s official rule reads from ``text`` (None: no letter found).

    The one place that rule lives: the scorers below and ``mapo eval``'s per-sample verdict
    both call it, so a record's ``correct`` flag always agrees with the official score.
    """
    if benchmark == "mme":
        return mme_extract(text) or None
    return extract_choice(text, sample.options)


def _choice(s: Sample, text: str) -> str | None:
    return predicted_choice(s, text, "vstar")


def score_vstar(samples: Iterable[Sample], predictions: Mapping[str, str]) -> dict[str, Any]:
    """V*: ``overall`` (all questions), ``per_category``, ``n``, ``missing``."""
    judged, missing = _judge(samples, predictions, _choice)
    return {
        "overall": _accuracy([ok for _, ok in judged]),
        "per_category": _grouped(judged, lambda s: s.category),
        "n": len(judged),
        "missing": missing,
    }


def score_hrbench(samples: Iterable[Sample], predictions: Mapping[str, str]) -> dict[str, Any]:
    """HR-Bench: per cycle accuracy (all, per category), averaged over cycles.

    Returns ``overall`` (mean over cycles of the all-question accuracy),
    ``per_category`` (mean over cycles of each category's accuracy),
    ``per_cycle`` ({cycle: {"all": acc, category: acc}}), ``n``, ``missing``.
    """
    judged, missing = _judge(samples, predictions, _choice)
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


def score_mme_realworld(samples: Iterable[Sample], predictions: Mapping[str, str]) -> dict[str, Any]:
    """MME-RealWorld: ``overall``, ``per_task``, ``per_subtask`` (``task/subtask``), ``per_category``."""
    judged, missing = _judge(samples, predictions, lambda s, text: predicted_choice(s, text, "mme"))
    return {
        "overall": _accuracy([ok for _, ok in judged]),
        "per_task": _grouped(judged, lambda s: str(s.meta.get("task", ""))),
        "per_subtask": _grouped(judged, lambda s: f"{s.meta.get('task', '')}/{s.meta.get('subtask', '')}"),
        "per_category": _grouped(judged, lambda s: s.category),
        "n": len(judged),
        "missing": missing,
    }


SCORERS: dict[str, Callable[[Iterable[Sample], Mapping[str, str]], dict[str, Any]]] = {
    "vstar": score_vstar,
    "hrbench": score_hrbench,
    "mme": score_mme_realworld,
    "synth": score_vstar,  # the synthetic task mirrors V*'s categories
}


def score(samples: list[Sample], predictions: Mapping[str, str], benchmark: str | None = None) -> dict[str, Any]:
    """Score with ``benchmark``'s rule, or the one named by the samples' ``meta["source"]``."""
    if benchmark is None:
        sources = {s.meta.get("source", "") for s in samples}
        if len(sources) != 1:
            raise ValueError(f"samples come from several sources {sorted(sources)}; pass benchmark=...")
        benchmark = sources.pop()
    if benchmark not in SCORERS:
        raise ValueError(f"no scorer for benchmark {benchmark!r}; choose from {', '.join(SCORERS)}")
    return SCORERS[benchmark](samples, predictions)
