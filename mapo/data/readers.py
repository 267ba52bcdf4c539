"""Readers of the benchmark and training formats, and :func:`load_samples` which picks one.

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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapo.data.formats.common import VSTAR_CATEGORIES
from mapo.data.formats.deepeyes import read_deepeyes
from mapo.data.formats.hrbench import read_hrbench
from mapo.data.formats.mme import read_mme_realworld
from mapo.data.formats.vstar import read_vstar
from mapo.data.sample import LoadResult

FORMATS = ("vstar", "hrbench", "mme", "deepeyes")


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
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if path.is_dir() and fmt != "vstar":
        path = _single_data_file(path, _SUFFIX_OF[fmt])
    return READERS[fmt](path, strict=strict, limit=limit, **reader_kwargs)


_SUFFIX_OF = {"hrbench": ".tsv", "mme": ".json", "deepeyes": ".parquet"}


def detect_format(path: Path) -> str:
    """The format of a file (by suffix) or folder (V* sub-folders, else its single data file)."""
    path = Path(path)
    if path.is_file():
        for fmt, suffix in _SUFFIX_OF.items():
            if path.suffix.lower() == suffix:
                return fmt
        raise ValueError(f"cannot tell the format of {path}: expected .tsv (HR-Bench), .json (MME), .parquet (DeepEyes)")
    if any((path / c).is_dir() for c in VSTAR_CATEGORIES):
        return "vstar"
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIX_OF.values())
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


READERS: dict[str, Callable[..., LoadResult]] = {
    "vstar": read_vstar,
    "hrbench": read_hrbench,
    "mme": read_mme_realworld,
    "deepeyes": read_deepeyes,
}
