"""Writers of the benchmark and training formats (the layouts the readers in :mod:`mapo.data.formats` read; :mod:`mapo.data.benchmarks` picks one).

Each writer stores what the real format has a field for, plus an extra
``mapo`` field (sample id, every ground-truth box with its caption, ``meta``,
the :class:`~mapo.data.task.TaskSpec`)
that the official tools ignore; the readers use it, so ``write -> read``
returns the same samples. Images are written as they are held (encoded bytes
keep their encoding; in-memory images become PNG).

V* stores the correct option first. The writer keeps that layout (real V*
tools read it) and records the sample's own option order in the ``mapo`` extra
field (``options``); :func:`mapo.data.formats.vstar.read_vstar` restores it, so a
sample has one option order and answer letter in memory and in every file
format. A V* folder without the field (the real benchmark) gets the reader's
seeded shuffle (:func:`~mapo.data.sample.shuffle_options`).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mapo.data.sample import IMAGE_FORMATS, LETTERS, Sample, correct_first

EXTRA_KEY = "mapo"


# ----------------------------------------------------------------------------- shared


def _check_samples(samples: Sequence[Sample], need_options: bool, fmt: str) -> None:
    ids = set()
    for s in samples:
        if not isinstance(s, Sample):
            raise ValueError(f"samples must be mapo.data.Sample, got {type(s).__name__}")
        if need_options and not s.options:
            raise ValueError(f"{fmt} is multiple choice only; sample {s.id} has no options")
        if s.id in ids:
            raise ValueError(f"duplicate sample id {s.id!r}: ids name files and must be unique")
        ids.add(s.id)


def _extras(sample: Sample) -> dict[str, Any]:
    extras = {"id": sample.id, "boxes": [b.to_dict() for b in sample.boxes], "meta": sample.meta}
    if sample.task is not None:
        extras["task"] = sample.task.to_dict()
    return extras


def _encoded(sample: Sample) -> tuple[bytes, str]:
    """The image as encoded bytes and a file suffix, re-encoding only in-memory images (as PNG)."""
    src = sample.image
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                fmt = (im.format or "PNG").lower()
        except (OSError, Image.UnidentifiedImageError) as e:
            raise ValueError(f"sample {sample.id}: image bytes cannot be decoded: {e}") from None
        return data, "." + {"jpeg": "jpg"}.get(fmt, fmt)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise ValueError(f"sample {sample.id}: image file not found: {path}")
        return path.read_bytes(), path.suffix.lower() or ".png"
    if isinstance(src, Image.Image):
        buf = io.BytesIO()
        src.convert("RGB").save(buf, format="PNG")
        return buf.getvalue(), ".png"
    raise ValueError(f"sample {sample.id}: image must be a path, bytes or PIL.Image, got {type(src).__name__}")


def _file_stem(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)


def _unique_stems(samples: Sequence[Sample]) -> list[str]:
    stems = [_file_stem(s.id) for s in samples]
    if len(set(stems)) != len(stems):
        raise ValueError("two sample ids map to the same file name after replacing unsafe characters")
    return stems


# ----------------------------------------------------------------------------- V*


def write_vstar(samples: Sequence[Sample], root: str | Path, seed: int = 0) -> Path:
    """``root/<category>/<id>.<ext>`` + ``<id>.json`` with the correct option first."""
    _check_samples(samples, need_options=True, fmt="V*")
    root = Path(root)
    for sample, stem in zip(samples, _unique_stems(samples)):
        folder = root / _file_stem(sample.category or "uncategorised")
        folder.mkdir(parents=True, exist_ok=True)
        data, suffix = _encoded(sample)
        (folder / f"{stem}{suffix}").write_bytes(data)
        targets = sample.target_boxes
        record = {
            "target_object": [b.label for b in targets],
            "bbox": [[b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1] for b in targets],
            "question": sample.question,
            "options": correct_first(sample.options, sample.answer, key=sample.id, seed=seed),
            EXTRA_KEY: {**_extras(sample), "options": list(sample.options)},
        }
        (folder / f"{stem}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- HR-Bench


def write_hrbench(samples: Sequence[Sample], path: str | Path) -> Path:
    """An HR-Bench TSV; option columns A.. as many as the longest option list (4 for HR-Bench)."""
    _check_samples(samples, need_options=True, fmt="HR-Bench")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    letters = list(LETTERS[: max((len(s.options) for s in samples), default=4)])
    header = ["index", "question", *letters, "answer", "category", "cycle_category", "image", EXTRA_KEY]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for i, s in enumerate(samples):
            data, _ = _encoded(s)
            options = s.options + [""] * (len(letters) - len(s.options))
            writer.writerow(
                [
                    i, s.question, *options, s.answer, s.category, s.meta.get("cycle_category", "0"),
                    base64.b64encode(data).decode("ascii"), json.dumps(_extras(s)),
                ]
            )
    return path


# ----------------------------------------------------------------------------- MME-RealWorld


def write_mme_realworld(samples: Sequence[Sample], path: str | Path) -> Path:
    """An MME-RealWorld JSON list with images under ``images/`` next to it."""
    _check_samples(samples, need_options=True, fmt="MME-RealWorld")
    path = Path(path)
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for s, stem in zip(samples, _unique_stems(samples)):
        data, suffix = _encoded(s)
        relative = f"images/{stem}{suffix}"
        (path.parent / relative).write_bytes(data)
        records.append(
            {
                "Question_id": s.id,
                "Image": relative,
                "Text": s.question,
                "Question Type": "Multiple Choice",
                "Answer choices": [f"({LETTERS[i]}) {o}" for i, o in enumerate(s.options)],
                "Ground truth": s.answer,
                "Task": s.meta.get("task", "Perception"),
                "Subtask": s.meta.get("subtask", s.category),
                "Category": s.category,
                EXTRA_KEY: _extras(s),
            }
        )
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- DeepEyes


def _deepeyes_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("images", pa.list_(pa.struct([("bytes", pa.binary())]))),
            ("env_name", pa.string()),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("index", pa.int64()),
                        ("split", pa.string()),
                        ("question", pa.string()),
                        ("options", pa.list_(pa.string())),
                        ("answer", pa.string()),
                        (EXTRA_KEY, pa.string()),
                    ]
                ),
            ),
        ]
    )


def write_deepeyes(
    samples: Sequence[Sample], path: str | Path, *, data_source: str = "mapo_synth", split: str = "train",
    batch_size: int = 256,
) -> Path:
    """A DeepEyes training parquet; the prompt uses mapo's protocol (system prompt, question, options)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mapo.agent import protocol

    _check_samples(samples, need_options=False, fmt="DeepEyes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = _deepeyes_schema()
    system = protocol.system_prompt()
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(samples), batch_size):
            rows = [_deepeyes_row(s, start + i, system, data_source, split) for i, s in enumerate(samples[start : start + batch_size])]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return path


def _deepeyes_row(s: Sample, index: int, system: str, data_source: str, split: str) -> dict[str, Any]:
    from mapo.agent import protocol

    data, _ = _encoded(s)
    return {
        "data_source": data_source,
        "prompt": [
            {"role": "system", "content": system},
            {"role": "user", "content": "<image>\n" + protocol.user_prompt(s.question, s.options)},
        ],
        "images": [{"bytes": data}],
        "env_name": "visual_toolbox_v2",
        "ability": s.category,
        "reward_model": {"style": "rule", "ground_truth": s.answer},
        "extra_info": {
            "index": index,
            "split": split,
            "question": s.question,
            "options": list(s.options),
            "answer": s.answer_text,
            EXTRA_KEY: json.dumps(_extras(s)),
        },
    }
