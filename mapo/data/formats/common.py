"""What every benchmark reader shares: the collect loop that counts and explains skipped records,
field checks, and the ``mapo`` extra field (ids, boxes, meta, task spec) of files mapo wrote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mapo.data.sample import LETTERS, Box, LoadReport, LoadResult, Sample, open_image, probe_image
from mapo.data.task import TaskSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VSTAR_CATEGORIES = ("direct_attributes", "relative_position")
EXTRA_KEY = "mapo"  # the extra field holding id / boxes / meta / task


class BadRecord(ValueError):
    """A record that cannot become a Sample; the message says why."""


def collect_samples(
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
    first_row: dict[str, int | str] = {}  # sample id -> the row that holds it first
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
        except OSError as e:
            # A path the filesystem cannot even look up (a 5,000-character name, a bad encoding): that row only.
            reason = f"unusable image path ({e.strerror or type(e).__name__})"
            if strict:
                raise ValueError(f"{file} [row {row}]: {reason}") from None
            report.add_issue(file, row, reason)
            continue
        except (TypeError, IndexError, KeyError, AttributeError, RecursionError) as e:
            # A field of an unexpected type or depth deep inside a record: that row is malformed, the load goes on.
            reason = f"malformed record ({type(e).__name__}: {e})"
            if strict:
                raise ValueError(f"{file} [row {row}]: {reason}") from None
            report.add_issue(file, row, reason)
            continue
        if sample.id in first_row:
            # Two rows under one id would be scored (and resumed) as one sample: keep the first, name the other.
            reason = f"duplicate id {sample.id!r} (first at row {first_row[sample.id]}); only the first row is used"
            if strict:
                raise ValueError(f"{file} [row {row}]: {reason}")
            report.add_issue(file, row, reason)
            continue
        first_row[sample.id] = row
        samples.append(sample)
        report.origins[sample.id] = (file, row)  # so a sample skipped later (eval, training) is named by file and row
    report.loaded = len(samples)
    return LoadResult(samples, report)


def _check_option_count(sample: Sample) -> None:
    # Options are lettered A-Z in prompts and answers; a 27th has no letter.
    if len(sample.options) > len(LETTERS):
        raise BadRecord(f"{len(sample.options)} options; at most {len(LETTERS)} can be lettered A-Z")


def require_fields(record: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in record or record[k] is None]
    if missing:
        raise BadRecord(f"missing field(s) {', '.join(missing)}")


def text_field(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadRecord(f"field {name} must be text, got {type(value).__name__}")


def safe_path(root: Path, relative: Any, name: str) -> Path:
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


def extras_field(raw: Any) -> dict[str, Any]:
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


def boxes_from_extras(extras: dict[str, Any]) -> list[Box] | None:
    if "boxes" not in extras:
        return None
    if not isinstance(extras["boxes"], list):
        raise BadRecord(f"{EXTRA_KEY}.boxes must be a list")
    return [Box.from_dict(b) for b in extras["boxes"]]


def meta_fields(base: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
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


def letter_answer(answer: str, options: list[str]) -> str:
    """A letter answer for multiple choice: the letter itself, "(B)", or the exact option text."""
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Z])\)?\.?", a)
    if m and m.group(1) in LETTERS[: len(options)]:
        return m.group(1)
    for i, option in enumerate(options):
        if a.lower() == option.strip().lower():
            return LETTERS[i]
    raise BadRecord(f"answer {answer!r} is neither an option letter {list(LETTERS[: len(options)])} nor an option text")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ``BadRecord`` when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadRecord(f"cannot read JSON: {e}") from None
    except RecursionError:
        raise BadRecord("cannot read JSON: nested too deeply") from None
