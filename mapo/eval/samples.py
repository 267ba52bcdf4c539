"""The samples an eval plays (benchmark files or ``synth:N[:LEVEL[:SEED]]``) and how answers are judged."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapo.metrics.records import PredictionRecord


SYNTH_SPEC = re.compile(r"^synth:(\d+)(?::([A-Za-z_]\w*))?(?::(\d+))?$")  # level checked against synth.LEVELS

MAX_SYNTH_SAMPLES = 100_000  # synthetic samples are built in memory: a bound, not a typo's worth of RAM


def load_eval_samples(data: str, limit: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Samples of ``data`` and what loading reported (``loaded``, ``skipped``, ``issues``, ``skipped_rows``,
    and ``origins``: sample id -> (file, row)).

    ``data`` is anything :func:`mapo.data.load_samples` reads (V* folder, HR-Bench
    TSV, MME-RealWorld JSON, DeepEyes parquet, ``mapo data synth`` output), or
    ``synth:N[:LEVEL[:SEED]]`` to generate N synthetic samples in memory
    (default level easy, seed 1000003: held out from SFT's training seed 0).
    """
    m = SYNTH_SPEC.match(str(data))
    if m:
        from mapo.data import synth

        if m.group(2) is not None and m.group(2) not in synth.LEVELS:
            raise ValueError(f"--data {data!r}: unknown level {m.group(2)!r}; choose from {', '.join(synth.LEVELS)}")
        n = int(m.group(1)) if limit is None else min(int(m.group(1)), limit)
        if n > MAX_SYNTH_SAMPLES:
            raise ValueError(
                f"--data {data}: {n} synthetic samples would be built in memory, over the bound of "
                f"{MAX_SYNTH_SAMPLES}; pass --limit (at most {MAX_SYNTH_SAMPLES}) or write them with `mapo data synth`"
            )
        samples = synth.generate(n, seed=int(m.group(3) or 1000003), config=m.group(2) or "easy")
        origins = {s.id: (str(data), i) for i, s in enumerate(samples)}
        return samples, {"source": str(data), "format": "synth", "loaded": len(samples), "skipped": 0, "issues": [],
                         "skipped_rows": [],
                         "origins": origins}
    if str(data).startswith("synth:"):
        from mapo.data.synth import LEVELS

        raise ValueError(f"--data {data!r}: write synthetic sources as synth:N[:LEVEL[:SEED]], LEVEL one of {', '.join(LEVELS)}")
    from mapo.data import load_samples

    result = load_samples(_synth_output_source(data), limit=limit)
    report = result.report
    return list(result), {
        "source": report.source or str(data),
        "format": report.format,
        "loaded": report.loaded,
        "skipped": report.skipped,
        "issues": [str(i) for i in report.issues[:100]],
        "skipped_rows": [{"file": i.file, "row": i.row, "reason": i.reason, "stage": "load"} for i in report.issues],
        "origins": dict(report.origins),
    }


def _synth_output_source(data: str) -> str:
    """The folder ``mapo data synth --out DIR`` wrote: its V* copy (else the first format written); others as given."""
    root = Path(data)
    if not (root / "synth_config.yaml").is_file():
        return data
    from mapo.data.benchmarks import FORMATS

    for fmt in FORMATS:
        if (root / fmt).is_dir():
            return str(root / fmt)
    return data


def judge(sample: Any, answer_text: str | None, benchmark: str) -> tuple[str | None, bool]:
    """``(prediction, correct)`` of one sample from its ``<answer>`` text (None: never answered)."""
    from mapo.data.scoring import predicted_choice
    from mapo.algo.reward import answer_matches

    if answer_text is None:
        return None, False
    if benchmark == "mme" or sample.options:  # multiple choice: the official rule (mapo.data.scoring)
        letter = predicted_choice(sample, answer_text, benchmark)
        return letter, letter == sample.answer
    return answer_text.strip(), answer_matches(answer_text, sample.answer)


def official_scores(
    samples: Sequence[Any], records: Sequence[PredictionRecord], benchmark: str, scoring: str = "mapo"
) -> dict[str, Any]:
    """The benchmark's aggregation over ``samples`` (a sample without a record counts as wrong).

    ``scoring``: whose reading of a multiple-choice answer (``mapo.data.harness.HARNESSES``).
    """
    from mapo.data.benchmarks import scorer_of

    scorer = scorer_of(benchmark)
    answers = {r.id: _answer_text(r) for r in records}
    predictions = {k: v for k, v in answers.items() if v is not None}
    if scorer is not None:
        return scorer(list(samples), predictions, scoring)
    # No official rule (DeepEyes training data, open questions): plain accuracy, per category.
    by_id = {r.id: r for r in records}
    groups: dict[str, list[bool]] = defaultdict(list)
    flags = []
    for s in samples:
        ok = by_id[s.id].correct if s.id in by_id else False
        flags.append(ok)
        groups[s.category].append(ok)
    return {
        "overall": sum(flags) / len(flags) if flags else float("nan"),
        "per_category": {k: sum(v) / len(v) for k, v in sorted(groups.items())},
        "n": len(flags),
        "missing": sum(s.id not in by_id for s in samples),
        "rule": "exact match after normalisation (no official aggregation for this source)",
    }


def _answer_text(record: PredictionRecord) -> str | None:
    return record.meta.get("answer_text")


def _benchmark_of(samples: Sequence[Any]) -> str:
    sources = sorted({str(s.meta.get("source", "")) for s in samples})
    if len(sources) != 1:
        raise ValueError(f"samples come from several sources {sources}; set benchmark=... in the eval config")
    return sources[0]
