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

import base64
import binascii
import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mapo.data.sample import (
    DEFAULT_MAX_PIXELS,
    LETTERS,
    Box,
    LoadReport,
    LoadResult,
    Sample,
    open_image,
    probe_image,
    restore_option_order,
    shuffle_options,
)
from mapo.data.task import TaskSpec

FORMATS = ("vstar", "hrbench", "mme", "deepeyes")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VSTAR_CATEGORIES = ("direct_attributes", "relative_position")
EXTRA_KEY = "mapo"  # the extra field holding id / boxes / meta


class BadRecord(ValueError):
    """A record that cannot become a Sample; the message says why."""


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


# ----------------------------------------------------------------------------- shared plumbing


def _collect(
    records: Iterator[tuple[str, int | str, Callable[[], Sample]]],
    report: LoadReport,
    *,
    strict: bool,
    limit: int | None,
    max_pixels: int,
    check_images: bool,
    decode_images: bool = False,
) -> LoadResult:
    """Build samples from ``(file, row, make)`` records, counting and explaining each failure.

    ``check_images`` reads each image's header; ``decode_images`` decodes every
    pixel (what ``mapo data check`` does), so a truncated file is caught here.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    samples: list[Sample] = []
    for file, row, make in records:
        if limit is not None and len(samples) >= limit:
            break
        try:
            sample = make()
            _check_option_count(sample)
            if decode_images:
                open_image(sample.image, max_pixels)
            elif check_images:
                probe_image(sample.image, max_pixels)
        except (BadRecord, ValueError) as e:
            if strict:
                raise ValueError(f"{file} [row {row}]: {e}") from None
            report.add_issue(file, row, str(e))
            continue
        except (TypeError, IndexError, KeyError, AttributeError, RecursionError) as e:
            # A field of an unexpected type or depth deep inside a record: that row is malformed, the load goes on.
            reason = f"malformed record ({type(e).__name__}: {e})"
            if strict:
                raise ValueError(f"{file} [row {row}]: {reason}") from None
            report.add_issue(file, row, reason)
            continue
        samples.append(sample)
        report.origins[sample.id] = (file, row)  # so a sample skipped later (eval, training) is named by file and row
    report.loaded = len(samples)
    return LoadResult(samples, report)


def _check_option_count(sample: Sample) -> None:
    # Options are lettered A-Z in prompts and answers; a 27th has no letter.
    if len(sample.options) > len(LETTERS):
        raise BadRecord(f"{len(sample.options)} options; at most {len(LETTERS)} can be lettered A-Z")


def _require(record: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in record or record[k] is None]
    if missing:
        raise BadRecord(f"missing field(s) {', '.join(missing)}")


def _text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadRecord(f"field {name} must be text, got {type(value).__name__}")


def _safe_path(root: Path, relative: Any, name: str) -> Path:
    """``root / relative``, refusing absolute paths and anything that resolves outside ``root``."""
    if not isinstance(relative, str) or not relative:
        raise BadRecord(f"field {name} must be a non-empty relative path, got {relative!r}")
    candidate = Path(relative)
    if candidate.is_absolute():
        raise BadRecord(f"field {name} is an absolute path ({relative}); paths must be relative to {root}")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BadRecord(f"field {name} ({relative}) escapes the dataset root {root}")
    return resolved


def _extras(raw: Any) -> dict[str, Any]:
    """The ``mapo`` extra field (dict or JSON text) as a dict; {} when absent."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise BadRecord(f"field {EXTRA_KEY} is not valid JSON: {e}") from None
        except RecursionError:
            raise BadRecord(f"field {EXTRA_KEY} is nested too deeply") from None
    if not isinstance(raw, dict):
        raise BadRecord(f"field {EXTRA_KEY} must be a mapping, got {type(raw).__name__}")
    return raw


def _boxes_from_extras(extras: dict[str, Any]) -> list[Box] | None:
    if "boxes" not in extras:
        return None
    if not isinstance(extras["boxes"], list):
        raise BadRecord(f"{EXTRA_KEY}.boxes must be a list")
    return [Box.from_dict(b) for b in extras["boxes"]]


def _meta_fields(base: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """The sample's ``meta`` (``base`` updated by the extra field's) and ``task`` (its spec, if the file has one)."""
    meta, task = _meta_and_task(base, extras)
    return {"meta": meta, "task": task}


def _meta_and_task(base: dict[str, Any], extras: dict[str, Any]) -> tuple[dict[str, Any], TaskSpec | None]:
    extra_meta = extras.get("meta", {})
    if not isinstance(extra_meta, dict):
        raise BadRecord(f"{EXTRA_KEY}.meta must be a mapping")
    meta = {**base, **extra_meta}
    if "task" in extras:
        try:
            return meta, TaskSpec.from_dict(extras["task"])
        except (TypeError, ValueError) as e:
            raise BadRecord(f"{EXTRA_KEY}.task: {e}") from None
    return _legacy_task(meta)


_LEGACY_TASK_KEYS = ("view_side", "obs_side", "grid", "family")


def _legacy_task(meta: dict[str, Any]) -> tuple[dict[str, Any], TaskSpec | None]:
    """Files written before samples had a task spec kept its facts in ``meta``: move them to a spec."""
    if not (isinstance(meta.get("view_side"), int) and isinstance(meta.get("obs_side"), int)):
        return meta, None
    known = {k: meta[k] for k in _LEGACY_TASK_KEYS if k in meta}
    try:
        task = TaskSpec(**known)
    except (TypeError, ValueError) as e:
        raise BadRecord(f"{EXTRA_KEY}.meta task fields: {e}") from None
    return {k: v for k, v in meta.items() if k not in _LEGACY_TASK_KEYS}, task


def _letter_answer(answer: str, options: list[str]) -> str:
    """A letter answer for multiple choice: the letter itself, "(B)", or the exact option text."""
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Z])\)?\.?", a)
    if m and m.group(1) in LETTERS[: len(options)]:
        return m.group(1)
    for i, option in enumerate(options):
        if a.lower() == option.strip().lower():
            return LETTERS[i]
    raise BadRecord(f"answer {answer!r} is neither an option letter {list(LETTERS[: len(options)])} nor an option text")


# ----------------------------------------------------------------------------- V* Bench


def read_vstar(
    root: str | Path,
    *,
    strict: bool = False,
    limit: int | None = None,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    decode_images: bool = False,
) -> LoadResult:
    """A V* Bench folder: every ``<category>/<name>.json`` with its image; options shuffled by ``(seed, id)``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"V* root must be a folder, got {root}")
    report = LoadReport(source=str(root), format="vstar")

    def records():
        for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for json_path in sorted(category_dir.glob("*.json")):
                yield str(json_path), 0, lambda p=json_path, c=category_dir.name: _vstar_sample(root, p, c, seed)

    return _collect(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


def _vstar_sample(root: Path, json_path: Path, category: str, seed: int) -> Sample:
    _inside(root, json_path, "the annotation")
    record = _read_json(json_path)
    if not isinstance(record, dict):
        raise BadRecord("the annotation must be a JSON object")
    _require(record, ("question", "options"))
    image = _inside(root, _vstar_image(json_path), "the image")
    options = record["options"]
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise BadRecord(f"options must be a non-empty list of strings (correct first), got {options!r}")
    if len(options) > len(LETTERS):
        raise BadRecord(f"{len(options)} options; at most {len(LETTERS)} can be lettered A-Z")
    extras = _extras(record.get(EXTRA_KEY))
    sample_id = _text(extras.get("id", f"{category}/{json_path.stem}"), "id")
    if "options" in extras:  # written by mapo: the sample's own order, the same letters as in memory
        try:
            shuffled, answer = restore_option_order(options, extras["options"])
        except ValueError as e:
            raise BadRecord(f"{EXTRA_KEY}.options: {e}") from None
    else:
        shuffled, answer = shuffle_options(options, key=sample_id, seed=seed)
    boxes = _boxes_from_extras(extras)
    if boxes is None:
        boxes = _vstar_boxes(record)
    return Sample(
        id=sample_id,
        image=str(image),
        question=_text(record["question"], "question"),
        options=shuffled,
        answer=answer,
        category=category,
        boxes=boxes,
        **_meta_fields({"source": "vstar", "file": str(json_path.relative_to(root))}, extras),
    )


def _inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved, refusing a symlink (of the file or a folder) that leads outside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BadRecord(f"{what} {path.name} is a link to {resolved}, outside the dataset root {root}")
    return resolved


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadRecord(f"cannot read JSON: {e}") from None
    except RecursionError:
        raise BadRecord("cannot read JSON: nested too deeply") from None


def _vstar_image(json_path: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (json_path.with_suffix(suffix), json_path.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    raise BadRecord(f"no image next to the annotation (tried {', '.join(IMAGE_SUFFIXES)})")


def _vstar_boxes(record: dict) -> list[Box]:
    """Target boxes from ``bbox`` ([x, y, w, h] or a list of them) and ``target_object`` names."""
    bbox, names = record.get("bbox"), record.get("target_object", [])
    if bbox is None:
        return []
    if isinstance(names, str):
        names = [names]
    if names is None:
        names = []
    if not isinstance(names, list):
        raise BadRecord(f"target_object must be a name or a list of names, got {names!r}")
    if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox):
        bbox = [bbox]
    if not isinstance(bbox, list):
        raise BadRecord(f"bbox must be [x, y, w, h] or a list of them, got {bbox!r}")
    boxes = []
    for i, b in enumerate(bbox):
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
            raise BadRecord(f"bbox[{i}] must be [x, y, w, h] numbers, got {b!r}")
        x, y, w, h = map(float, b)
        if w <= 0 or h <= 0:
            raise BadRecord(f"bbox[{i}] has a non-positive width or height: {b!r}")
        label = str(names[i]) if i < len(names) else ""
        boxes.append(Box(x, y, x + w, y + h, label=label, is_target=True))
    return boxes


# ----------------------------------------------------------------------------- HR-Bench


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape turns a non-UTF-8 byte into


def read_hrbench(
    path: str | Path,
    *,
    strict: bool = False,
    limit: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    decode_images: bool = False,
) -> LoadResult:
    """An HR-Bench TSV (``index, question, A..D, answer, category, cycle_category, image`` base64)."""
    path = Path(path)
    report = LoadReport(source=str(path), format="hrbench")
    csv.field_size_limit(sys.maxsize)  # base64 8K images are tens of MB in one field
    # surrogateescape: a byte that is not UTF-8 survives decoding as a lone surrogate, so the
    # row holding it is skipped and named (_hrbench_sample) instead of the whole file failing.
    handle = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(handle, delimiter="\t")
    header = reader.fieldnames or []
    missing = [c for c in ("index", "question", "A", "B", "answer", "image") if c not in header]
    if missing:
        handle.close()
        raise ValueError(f"{path}: not an HR-Bench TSV, missing column(s) {', '.join(missing)}; header is {header}")
    letters = [c for c in LETTERS if c in header]

    def records():
        with handle:
            for row_no, row in enumerate(reader, start=2):  # row 1 is the header
                yield str(path), row_no, lambda r=row: _hrbench_sample(r, letters)

    return _collect(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


def _hrbench_sample(row: dict[str, str], letters: list[str]) -> Sample:
    if None in row:
        raise BadRecord("the row has more fields than the header")
    bad = [k for k, v in row.items() if isinstance(v, str) and _NOT_UTF8.search(v)]
    if bad:
        raise BadRecord(f"field(s) {', '.join(bad)} hold bytes that are not UTF-8")
    empty = [k for k in ("index", "question", "answer", "image") if not row.get(k)]
    if empty:
        raise BadRecord(f"missing field(s) {', '.join(empty)}")
    options = [row[c] for c in letters if row.get(c) not in (None, "", "nan")]
    try:
        image = base64.b64decode(row["image"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRecord(f"image is not valid base64: {e}") from None
    extras = _extras(row.get(EXTRA_KEY))
    boxes = _boxes_from_extras(extras)
    return Sample(
        id=_text(extras.get("id", row["index"]), "id"),
        image=image,
        question=row["question"],
        options=options,
        answer=_letter_answer(row["answer"], options),
        category=row.get("category", "") or "",
        boxes=boxes or [],
        **_meta_fields(
            {"source": "hrbench", "index": row["index"], "cycle_category": row.get("cycle_category", "") or ""}, extras
        ),
    )


# ----------------------------------------------------------------------------- MME-RealWorld


def read_mme_realworld(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    strict: bool = False,
    limit: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    decode_images: bool = False,
) -> LoadResult:
    """An MME-RealWorld or -Lite JSON list; ``Image`` paths are resolved under ``image_root``."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not root.is_dir():
        raise ValueError(f"image_root must be a folder, got {root}")
    data = _read_json(path) if path.is_file() else None
    if not isinstance(data, list):
        raise ValueError(f"{path}: an MME-RealWorld file must hold a JSON list of records")
    report = LoadReport(source=str(path), format="mme")

    def records():
        for i, record in enumerate(data):
            yield str(path), i, lambda r=record: _mme_sample(r, root)

    return _collect(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


_CHOICE_PREFIX = re.compile(r"^\s*\(?([A-Z])\)?\s*[.:)]?\s*")


def _mme_sample(record: Any, root: Path) -> Sample:
    if not isinstance(record, dict):
        raise BadRecord(f"a record must be a JSON object, got {type(record).__name__}")
    _require(record, ("Question_id", "Image", "Text", "Answer choices", "Ground truth"))
    choices = record["Answer choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise BadRecord(f"Answer choices must be a list of strings, got {choices!r}")
    options = [_CHOICE_PREFIX.sub("", c, count=1) for c in choices]  # "(A) red" -> "red"
    extras = _extras(record.get(EXTRA_KEY))
    boxes = _boxes_from_extras(extras)
    return Sample(
        id=_text(extras.get("id", record["Question_id"]), "id"),
        image=str(_safe_path(root, record["Image"], "Image")),
        question=_text(record["Text"], "Text"),
        options=options,
        answer=_letter_answer(_text(record["Ground truth"], "Ground truth"), options),
        category=_text(record.get("Category", ""), "Category"),
        boxes=boxes or [],
        **_meta_fields(
            {
                "source": "mme",
                "task": _text(record.get("Task", ""), "Task"),
                "subtask": _text(record.get("Subtask", ""), "Subtask"),
            },
            extras,
        ),
    )


# ----------------------------------------------------------------------------- DeepEyes parquet


def read_deepeyes(
    path: str | Path,
    *,
    strict: bool = False,
    limit: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    decode_images: bool = False,
    batch_size: int = 64,
) -> LoadResult:
    """A DeepEyes training parquet; read in batches so large files do not load at once."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several unrelated types for a non-parquet file
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in ("prompt", "images", "reward_model") if c not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: not a DeepEyes parquet, missing column(s) {', '.join(missing)}")
    report = LoadReport(source=str(path), format="deepeyes")

    def records():
        row_no = 0
        for batch in parquet.iter_batches(batch_size=batch_size):
            for record in batch.to_pylist():
                yield str(path), row_no, lambda r=record, n=row_no: _deepeyes_sample(r, n, path.parent)
                row_no += 1

    return _collect(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


# "(A) red", "A. red", "A: red", "A) red"; a bare "A red" is prose, not an option.
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s+(.+?)\s*$")


def _deepeyes_sample(record: dict, row_no: int, root: Path) -> Sample:
    _require(record, ("prompt", "images", "reward_model"))
    images = record["images"]
    if not isinstance(images, list) or not images:
        raise BadRecord("images must be a non-empty list of {bytes} or {path}")
    image = _deepeyes_image(images[0], root)
    reward = record["reward_model"]
    if not isinstance(reward, dict) or reward.get("ground_truth") is None:
        raise BadRecord("reward_model must be a mapping with ground_truth")
    info = record.get("extra_info") or {}
    if not isinstance(info, dict):
        raise BadRecord("extra_info must be a mapping")
    extras = _extras(info.get(EXTRA_KEY))
    question, options = _deepeyes_question(record["prompt"], info)
    ground_truth = _text(reward["ground_truth"], "reward_model.ground_truth")
    try:
        answer = _letter_answer(ground_truth, options) if options else ground_truth
    except BadRecord:  # free-text ground truth for a question that lists options: keep it open
        options, answer = [], ground_truth
    boxes = _boxes_from_extras(extras)
    return Sample(
        id=_text(extras.get("id", info.get("index", row_no)), "id"),
        image=image,
        question=question,
        options=options,
        answer=answer,
        category=_text(extras.get("category", record.get("ability") or ""), "ability"),
        boxes=boxes or [],
        **_meta_fields(
            {
                "source": "deepeyes",
                "data_source": record.get("data_source") or "",
                "env_name": record.get("env_name") or "",
                "reward_style": reward.get("style") or "",
            },
            extras,
        ),
    )


def _deepeyes_image(entry: Any, root: Path) -> bytes | str:
    if isinstance(entry, dict) and entry.get("bytes"):
        return bytes(entry["bytes"])
    if isinstance(entry, dict) and entry.get("path"):
        return str(_safe_path(root, entry["path"], "images[0].path"))
    raise BadRecord("images[0] has neither bytes nor a path")


def _deepeyes_question(prompt: Any, info: dict) -> tuple[str, list[str]]:
    """Question and options: from extra_info when there, else parsed from the last user message."""
    if isinstance(info.get("question"), str):
        options = info.get("options")
        if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
            raise BadRecord("extra_info.options must be a list of strings")
        return info["question"], list(options or [])
    if not isinstance(prompt, list) or not prompt:
        raise BadRecord("prompt must be a non-empty list of chat messages")
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise BadRecord("prompt has no user message with text content")
    text = users[-1]["content"].replace("<image>", "").strip()
    question_lines, options = [], []
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        letter = m and (m.group(1) or m.group(2))
        if letter and len(options) < len(LETTERS) and letter == LETTERS[len(options)]:
            options.append(m.group(3))
        elif not options:
            question_lines.append(line)
    return "\n".join(question_lines).strip(), options


READERS: dict[str, Callable[..., LoadResult]] = {
    "vstar": read_vstar,
    "hrbench": read_hrbench,
    "mme": read_mme_realworld,
    "deepeyes": read_deepeyes,
}
