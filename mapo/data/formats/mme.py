"""MME-RealWorld(-Lite): a JSON list with ``Question_id, Image, Text, Answer choices, Ground truth, Task,
Subtask, Category``; ``Image`` is a path under ``image_root`` (default: the JSON file's folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mapo.data.formats.common import (
    BadRecord,
    EXTRA_KEY,
    boxes_from_extras,
    collect_samples,
    extras_field,
    letter_answer,
    meta_fields,
    read_json,
    require_fields,
    safe_path,
    text_field,
)
from mapo.data.sample import DEFAULT_MAX_PIXELS, LoadReport, LoadResult, Sample


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
    data = read_json(path) if path.is_file() else None
    if not isinstance(data, list):
        raise ValueError(f"{path}: an MME-RealWorld file must hold a JSON list of records")
    report = LoadReport(source=str(path), format="mme")

    def records():
        for i, record in enumerate(data):
            yield str(path), i, lambda r=record: _mme_sample(r, root)

    return collect_samples(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


_CHOICE_PREFIX = re.compile(r"^\s*\(?([A-Z])\)?\s*[.:)]?\s*")


def _mme_sample(record: Any, root: Path) -> Sample:
    if not isinstance(record, dict):
        raise BadRecord(f"a record must be a JSON object, got {type(record).__name__}")
    require_fields(record, ("Question_id", "Image", "Text", "Answer choices", "Ground truth"))
    choices = record["Answer choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise BadRecord(f"Answer choices must be a list of strings, got {choices!r}")
    options = [_CHOICE_PREFIX.sub("", c, count=1) for c in choices]  # "(A) red" -> "red"
    extras = extras_field(record.get(EXTRA_KEY))
    boxes = boxes_from_extras(extras)
    return Sample(
        id=text_field(extras.get("id", record["Question_id"]), "id"),
        image=str(safe_path(root, record["Image"], "Image")),
        question=text_field(record["Text"], "Text"),
        options=options,
        answer=letter_answer(text_field(record["Ground truth"], "Ground truth"), options),
        category=text_field(record.get("Category", ""), "Category"),
        boxes=boxes or [],
        **meta_fields(
            {
                "source": "mme",
                "task": text_field(record.get("Task", ""), "Task"),
                "subtask": text_field(record.get("Subtask", ""), "Subtask"),
            },
            extras,
        ),
    )
