"""V* Bench: ``<root>/<category>/<name>.<jpg|png>`` + ``<name>.json`` (``target_object``, ``bbox``
``[x, y, w, h]``, ``question``, ``options`` with the correct one first).

Options are shuffled with a fixed seed keyed by the sample id (:func:`~mapo.data.sample.shuffle_options`),
or restored from ``mapo.options`` in a file mapo wrote.
"""

from __future__ import annotations

from pathlib import Path

from mapo.data.formats.common import (
    BadRecord,
    EXTRA_KEY,
    IMAGE_SUFFIXES,
    boxes_from_extras,
    collect_samples,
    extras_field,
    meta_fields,
    read_json,
    require_fields,
    text_field,
)
from mapo.data.sample import (
    DEFAULT_MAX_PIXELS,
    LETTERS,
    Box,
    LoadReport,
    LoadResult,
    Sample,
    restore_option_order,
    shuffle_options,
)


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

    return collect_samples(records(), report, strict=strict, limit=limit, max_pixels=max_pixels, check_images=check_images,
                    decode_images=decode_images)


def _vstar_sample(root: Path, json_path: Path, category: str, seed: int) -> Sample:
    _inside(root, json_path, "the annotation")
    record = read_json(json_path)
    if not isinstance(record, dict):
        raise BadRecord("the annotation must be a JSON object")
    require_fields(record, ("question", "options"))
    image = _inside(root, _vstar_image(json_path), "the image")
    options = record["options"]
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise BadRecord(f"options must be a non-empty list of strings (correct first), got {options!r}")
    if len(options) > len(LETTERS):
        raise BadRecord(f"{len(options)} options; at most {len(LETTERS)} can be lettered A-Z")
    extras = extras_field(record.get(EXTRA_KEY))
    sample_id = text_field(extras.get("id", f"{category}/{json_path.stem}"), "id")
    if "options" in extras:  # written by mapo: the sample's own order, the same letters as in memory
        try:
            shuffled, answer = restore_option_order(options, extras["options"])
        except ValueError as e:
            raise BadRecord(f"{EXTRA_KEY}.options: {e}") from None
    else:
        shuffled, answer = shuffle_options(options, key=sample_id, seed=seed)
    boxes = boxes_from_extras(extras)
    if boxes is None:
        boxes = _vstar_boxes(record)
    return Sample(
        id=sample_id,
        image=str(image),
        question=text_field(record["question"], "question"),
        options=shuffled,
        answer=answer,
        category=category,
        boxes=boxes,
        **meta_fields({"source": "vstar", "file": str(json_path.relative_to(root))}, extras),
    )


def _inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved, refusing a symlink (of the file or a folder) that leads outside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BadRecord(f"{what} {path.name} is a link to {resolved}, outside the dataset root {root}")
    return resolved


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
