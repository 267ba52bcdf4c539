"""DeepEyes training parquet: ``data_source, prompt, images[{bytes}], env_name, ability,
reward_model{style, ground_truth}, extra_info``.
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
    require_fields,
    safe_path,
    text_field,
)
from mapo.data.sample import DEFAULT_MAX_PIXELS, LETTERS, LoadReport, LoadResult, Sample


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

    return collect_samples(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


# "(A) red", "A. red", "A: red", "A) red"; a bare "A red" is prose, not an option.
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s+(.+?)\s*$")


def _deepeyes_sample(record: dict, row_no: int, root: Path) -> Sample:
    require_fields(record, ("prompt", "images", "reward_model"))
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
    extras = extras_field(info.get(EXTRA_KEY))
    question, options = _deepeyes_question(record["prompt"], info)
    ground_truth = text_field(reward["ground_truth"], "reward_model.ground_truth")
    try:
        answer = letter_answer(ground_truth, options) if options else ground_truth
    except BadRecord:  # free-text ground truth for a question that lists options: keep it open
        options, answer = [], ground_truth
    boxes = boxes_from_extras(extras)
    return Sample(
        id=text_field(extras.get("id", info.get("index", row_no)), "id"),
        image=image,
        question=question,
        options=options,
        answer=answer,
        category=text_field(extras.get("category", record.get("ability") or ""), "ability"),
        boxes=boxes or [],
        **meta_fields(
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
        return str(safe_path(root, entry["path"], "images[0].path"))
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
