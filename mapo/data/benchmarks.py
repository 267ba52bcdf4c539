"""The benchmark and training formats mapo reads and writes: one :class:`BenchmarkFormat` entry each.

An entry names the format's reader, writer, file suffix and official scorer;
:func:`load_samples` (detect and read), :func:`write_samples`, ``mapo data``,
``mapo eval`` and RL's ``data.source`` all read :data:`FORMATS`, so a new format is
its module under ``mapo/data/formats/`` plus one entry here.

Formats (see docs/data.md for the layouts):

- ``vstar``: V* Bench folder, ``<root>/<category>/<name>.<jpg|png>`` + ``<name>.json``
  with ``target_object``, ``bbox`` (``[x, y, w, h]``), ``question`` and
  ``options`` with the correct option first. Options are shuffled with a fixed
  seed keyed by the sample id (:func:`~mapo.data.sample.shuffle_options`); the
  unshuffled layout makes "always A" score 100%. A file mapo wrote records the
  sample's own order in ``mapo.options``, which is restored instead.
- ``hrbench``: HR-Bench TSV, ``index, question, A..D, answer, category,
  cycle_category, image`` (base64).
- ``mme``: MME-RealWorld(-Lite) JSON list with ``Question_id, Image, Text,
  Answer choices, Ground truth, Task, Subtask, Category``; ``Image`` is a path
  under ``image_root`` (default: the JSON file's folder).
- ``deepeyes``: DeepEyes training parquet, ``data_source, prompt, images[{bytes}],
  env_name, ability, reward_model{style, ground_truth}, extra_info``.

Every reader returns a :class:`~mapo.data.LoadResult` whose ``.report`` counts
loaded and skipped records and names the file and row of each skipped one.
With ``strict=True`` the first bad record raises ``ValueError`` instead.
Images are checked from their headers at load time (missing, undecodable, over
``max_pixels``) and decoded only when used; ``decode_images=True`` (``mapo data
check``) decodes every pixel, so a truncated file is caught at load time. A
record that is malformed in any way (a field of the wrong type, JSON nested too
deep, more than 26 options, a non-UTF-8 byte in an HR-Bench row) is skipped and
counted like every other bad row. Paths inside data files must stay
inside the dataset root, links included.

Ground truth that the real formats have no field for (all object boxes with
captions, the sample id, ``meta``) travels in an extra ``mapo`` field that the
official tools ignore; readers use it when present, so synthetic data written
in any format reads back identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.data.formats.common import VSTAR_CATEGORIES
from mapo.data.formats.deepeyes import read_deepeyes
from mapo.data.formats.hrbench import read_hrbench
from mapo.data.formats.mme import read_mme_realworld
from mapo.data.formats.vstar import read_vstar
from mapo.data.sample import LoadResult, Sample
from mapo.data.scoring import score_hrbench, score_mme_realworld, score_synth, score_vstar
from mapo.data.writers import write_deepeyes, write_hrbench, write_mme_realworld, write_vstar


@dataclass(frozen=True)
class BenchmarkFormat:
    """Everything mapo knows about one format, in one place."""

    title: str  # how messages name it ("HR-Bench")
    read: Callable[..., LoadResult]  # (path, *, strict, limit, **reader_kwargs) -> LoadResult
    write: Callable[[Sequence[Sample], Path], Path]  # (samples, target) -> the path to load back
    suffix: str | None  # the data file's suffix; None for a folder layout (V*)
    score: Callable[..., dict[str, Any]] | None  # official aggregation; None: accuracy overall and per category


FORMATS: dict[str, BenchmarkFormat] = {
    "vstar": BenchmarkFormat("V*", read_vstar, write_vstar, None, score_vstar),
    "hrbench": BenchmarkFormat("HR-Bench", read_hrbench, write_hrbench, ".tsv", score_hrbench),
    "mme": BenchmarkFormat("MME", read_mme_realworld, write_mme_realworld, ".json", score_mme_realworld),
    "deepeyes": BenchmarkFormat("DeepEyes", read_deepeyes, write_deepeyes, ".parquet", None),
}
# Sources that are no file format but have an official aggregation: the synthetic task is scored as V*.
EXTRA_SCORERS: dict[str, Callable[..., dict[str, Any]]] = {"synth": score_synth}


def scorer_of(benchmark: str) -> Callable[..., dict[str, Any]] | None:
    """The official aggregation of ``benchmark`` (a format name or ``synth``); None when it has none."""
    if benchmark in FORMATS:
        return FORMATS[benchmark].score
    return EXTRA_SCORERS.get(benchmark)


def score(
    samples: list[Sample], predictions: Mapping[str, str], benchmark: str | None = None, scoring: str = "mapo"
) -> dict[str, Any]:
    """Score with ``benchmark``'s aggregation (default: the samples' ``meta["source"]``), reading answers by ``scoring``."""
    if benchmark is None:
        sources = {s.meta.get("source", "") for s in samples}
        if len(sources) != 1:
            raise ValueError(f"samples come from several sources {sorted(sources)}; pass benchmark=...")
        benchmark = sources.pop()
    scorer = scorer_of(benchmark)
    if scorer is None:
        raise ValueError(f"no scorer for benchmark {benchmark!r}; choose from {', '.join(scored_benchmarks())}")
    return scorer(samples, predictions, scoring)


def scored_benchmarks() -> list[str]:
    """The benchmarks with an official aggregation: formats with a scorer, then the extra scorers (``synth``)."""
    return [name for name, f in FORMATS.items() if f.score is not None] + list(EXTRA_SCORERS)


def _suffixes() -> dict[str, str]:
    return {name: f.suffix for name, f in FORMATS.items() if f.suffix is not None}


def load_samples(
    source: str | Path, *, strict: bool = False, limit: int | None = None, format: str | None = None, **reader_kwargs: Any
) -> LoadResult:
    """Load samples from a V* folder, HR-Bench TSV, MME-RealWorld JSON or DeepEyes parquet.

    ``format`` overrides detection (one of :data:`FORMATS`). ``reader_kwargs``
    go to the reader (``max_pixels``, ``seed`` for V*, ``image_root`` for MME).
    """
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data source not found: {path}")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if path.is_dir() and FORMATS[fmt].suffix is not None:
        path = _single_data_file(path, FORMATS[fmt].suffix)
    return FORMATS[fmt].read(path, strict=strict, limit=limit, **reader_kwargs)


def detect_format(path: Path) -> str:
    """The format of a file (by suffix) or folder (V* sub-folders, else its single data file)."""
    path = Path(path)
    if path.is_file():
        for fmt, suffix in _suffixes().items():
            if path.suffix.lower() == suffix:
                return fmt
        expected = ", ".join(f"{suffix} ({FORMATS[fmt].title})" for fmt, suffix in _suffixes().items())
        raise ValueError(f"cannot tell the format of {path}: expected {expected}")
    if any((path / c).is_dir() for c in VSTAR_CATEGORIES):
        return "vstar"
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _suffixes().values())
    if len(found) == 1:
        return detect_format(found[0])
    subdirs = sorted(p.name for p in path.iterdir() if p.is_dir())
    raise ValueError(
        f"cannot tell the format of folder {path}: it has no V* category folders ({', '.join(VSTAR_CATEGORIES)}) "
        f"and {len(found)} data files ({', '.join(p.name for p in found) or 'none'}); pass one file or one of "
        f"its sub-folders ({', '.join(subdirs) or 'none'}), or format=..."
    )


def _single_data_file(folder: Path, suffix: str) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix)
    if len(found) != 1:
        raise ValueError(f"expected exactly one {suffix} file in {folder}, found {len(found)}: pass the file itself")
    return found[0]


def write_samples(samples: Sequence[Sample], out_dir: str | Path, formats: Sequence[str], name: str = "data") -> dict[str, Path]:
    """Write ``samples`` in each of ``formats`` under ``out_dir/<format>/``; returns format -> path to load."""
    out_dir = Path(out_dir)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    written = {}
    for fmt in formats:
        suffix = FORMATS[fmt].suffix
        target = out_dir / fmt if suffix is None else out_dir / fmt / f"{name}{suffix}"
        written[fmt] = FORMATS[fmt].write(samples, target)
    return written
