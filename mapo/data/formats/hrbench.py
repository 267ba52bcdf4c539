"""HR-Bench: one TSV of ``index, question, A..D, answer, category, cycle_category, image`` (base64)."""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from pathlib import Path

from mapo.data.formats.common import (
    BadRecord,
    EXTRA_KEY,
    boxes_from_extras,
    collect_samples,
    extras_field,
    letter_answer,
    meta_fields,
    text_field,
)
from mapo.data.sample import DEFAULT_MAX_PIXELS, LETTERS, LoadReport, LoadResult, Sample

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

    return collect_samples(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
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
    extras = extras_field(row.get(EXTRA_KEY))
    boxes = boxes_from_extras(extras)
    return Sample(
        id=text_field(extras.get("id", row["index"]), "id"),
        image=image,
        question=row["question"],
        options=options,
        answer=letter_answer(row["answer"], options),
        category=row.get("category", "") or "",
        boxes=boxes or [],
        **meta_fields(
            {"source": "hrbench", "index": row["index"], "cycle_category": row.get("cycle_category", "") or ""}, extras
        ),
    )
