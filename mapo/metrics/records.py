"""The prediction record: what ``mapo eval`` writes per sample and ``mapo report`` reads.

One JSON object per line in ``predictions.jsonl``. A record holds everything needed
to see what the agent did without re-running it: the question and truth, every
assistant turn with its parsed tool call (box in view *and* original pixels), the
file name of each crop the tool returned, the model's description of that crop
and its semantic score, the extracted answer, and why the episode ended.

Conventions:

- **Turn grouping.** ``TurnRecord`` ``j`` is assistant segment ``j`` together with
  the observation its tool call produced. Its ``description`` is the one the model
  wrote *about that observation*, i.e. the ``<description>`` at the start of segment
  ``j + 1`` (the protocol puts it there); ``semantic_score`` scores that
  (description, crop) pair. This groups "walk" and "talk" on one row, which is
  what the report shows.
- **Boxes** are ``[x1, y1, x2, y2]`` floats. ``bbox_view`` is in pixels of the image
  as the model saw it (``view_size``); ``bbox_original`` is in pixels of the original
  image (``image_size``), as mapped by ``mapo.agent.tools.view_to_original``. The report
  draws ``bbox_original`` only.
- **Files** (``image``, ``crop``) are paths relative to the eval directory. The
  ``image`` file may be a downscaled copy of the original: boxes stay in original
  pixels and are scaled by ``file size / image_size`` when drawn.
- **Any tool.** ``tool`` and ``args`` name the tool a turn called and its
  arguments (``{"bbox_2d": [...], "label": ...}`` for zoom-in, ``{"angle": 90}``
  for rotate). The zoom fields (``bbox_view``, ``bbox_original``, ``label``) stay,
  and records written before ``tool``/``args`` existed still read.
- ``iou`` has one entry per *valid* zoom-in crop, in turn order: the IoU of its
  ``bbox_original`` with the best-matching target box (empty without targets),
  as :func:`mapo.algo.crop_iou.crop_ious` defines it for training too.

Writing is line-atomic (one ``write`` of a full line, then flush and fsync), so
an interrupted eval leaves at most one truncated final line; :func:`read_jsonl`
skips and reports it, and :func:`append_jsonl` cuts it off before appending.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapo.algo.crop_iou import zoom_summary

BoxList = list[float]  # [x1, y1, x2, y2]


@dataclass
class TurnRecord:
    """One assistant turn and the observation its tool call produced (if any)."""

    text: str  # raw assistant text of this turn
    tool_call: bool = False  # the turn attempted a tool call (parsable or not)
    tool: str | None = None  # the tool's name as the model called it (any tool; None when unreadable)
    args: dict[str, Any] | None = None  # the call's arguments as the tool read them (None when it could not run)
    bbox_view: BoxList | None = None  # pixels of the model's view (view_size)
    bbox_original: BoxList | None = None  # pixels of the original image (image_size)
    label: str | None = None  # the tool call's "label" argument
    valid: bool = False  # the call parsed and passed box validation
    error: str | None = None  # why the call was rejected (None if valid or no call)
    crop: str | None = None  # crop file, relative to the eval dir
    description: str | None = None  # the model's description of this turn's crop
    semantic_score: float | None = None  # verifier score of (description, crop); training rollouts: s_{i,k} as used
    advantage: float | None = None  # training rollouts only: mean advantage over this turn's assistant tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "turn") -> TurnRecord:
        values = _check_fields(cls, data, where, optional=("tool", "args", "advantage"))  # absent in older records
        rec = cls(**values)
        rec.text = _as_str(rec.text, f"{where}.text")
        rec.tool = _as_str(rec.tool, f"{where}.tool", optional=True)
        if rec.args is not None and not isinstance(rec.args, dict):
            raise ValueError(f"{where}.args must be a mapping or null, got {rec.args!r}")
        rec.tool_call = _as_bool(rec.tool_call, f"{where}.tool_call")
        rec.valid = _as_bool(rec.valid, f"{where}.valid")
        rec.bbox_view = _as_box(rec.bbox_view, f"{where}.bbox_view", optional=True)
        rec.bbox_original = _as_box(rec.bbox_original, f"{where}.bbox_original", optional=True)
        for name in ("label", "error", "crop", "description"):
            setattr(rec, name, _as_str(getattr(rec, name), f"{where}.{name}", optional=True))
        rec.semantic_score = _as_float(rec.semantic_score, f"{where}.semantic_score", optional=True)
        rec.advantage = _as_float(rec.advantage, f"{where}.advantage", optional=True)
        if rec.valid and rec.bbox_original is None and (rec.args is None or "bbox_2d" in rec.args):
            # Zoom-in selects a region; older records (no args) are all zoom-in calls.
            raise ValueError(f"{where}: a valid tool call needs bbox_original when it zooms in (args with bbox_2d)")
        return rec


@dataclass
class PredictionRecord:
    """Everything ``mapo eval`` knows about one sample after the agent answered."""

    id: str
    source: str  # benchmark / data source name (e.g. "vstar", "synthetic")
    question: str
    answer: str  # ground truth (option letter for multiple choice)
    prediction: str | None  # extracted answer; None when the model never answered
    correct: bool
    finish_reason: str  # "answer", "max_turns", "max_tokens", "image_budget", ...
    category: str | None = None
    options: list[str] = field(default_factory=list)
    image: str | None = None  # input image file, relative to the eval dir
    image_size: list[int] = field(default_factory=lambda: [0, 0])  # original (w, h)
    view_size: list[int] = field(default_factory=lambda: [0, 0])  # model view (w, h)
    target_boxes: list[BoxList] = field(default_factory=list)  # original pixels
    turns: list[TurnRecord] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)  # one per valid crop
    meta: dict[str, Any] = field(default_factory=dict)

    # --- derived views used by metrics and the report -------------------------
    @property
    def tool_calls(self) -> int:
        return sum(t.tool_call for t in self.turns)

    @property
    def invalid_calls(self) -> int:
        return sum(t.tool_call and not t.valid for t in self.turns)

    @property
    def semantic_scores(self) -> list[float]:
        return [t.semantic_score for t in self.turns if t.semantic_score is not None]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["turns"] = [t.to_dict() for t in self.turns]
        return out

    def to_json(self) -> str:
        # allow_nan=False: NaN is not JSON; a NaN score must be None before writing.
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> PredictionRecord:
        values = _check_fields(cls, data, where)
        turns = values.get("turns", [])
        if not isinstance(turns, list):
            raise ValueError(f"{where}.turns must be a list, got {type(turns).__name__}")
        values["turns"] = [TurnRecord.from_dict(t, f"{where}.turns[{i}]") for i, t in enumerate(turns)]
        rec = cls(**values)
        rec.id = _as_str(rec.id, f"{where}.id", coerce_number=True)
        for name in ("source", "question", "answer", "finish_reason"):
            setattr(rec, name, _as_str(getattr(rec, name), f"{where}.{name}"))
        for name in ("prediction", "category", "image"):
            setattr(rec, name, _as_str(getattr(rec, name), f"{where}.{name}", optional=True))
        rec.correct = _as_bool(rec.correct, f"{where}.correct")
        if not isinstance(rec.options, list):
            raise ValueError(f"{where}.options must be a list of strings, got {rec.options!r}")
        rec.options = [_as_str(o, f"{where}.options[{i}]") for i, o in enumerate(rec.options)]
        rec.image_size = _as_size(rec.image_size, f"{where}.image_size")
        rec.view_size = _as_size(rec.view_size, f"{where}.view_size")
        if not isinstance(rec.target_boxes, list):
            raise ValueError(f"{where}.target_boxes must be a list of [x1, y1, x2, y2], got {rec.target_boxes!r}")
        rec.target_boxes = [_as_box(b, f"{where}.target_boxes[{i}]") for i, b in enumerate(rec.target_boxes)]
        if not isinstance(rec.iou, list):
            raise ValueError(f"{where}.iou must be a list of numbers, got {rec.iou!r}")
        rec.iou = [_as_float(v, f"{where}.iou[{i}]") for i, v in enumerate(rec.iou)]
        if not isinstance(rec.meta, dict):
            raise ValueError(f"{where}.meta must be a mapping, got {type(rec.meta).__name__}")
        return rec

    @classmethod
    def from_json(cls, line: str, where: str = "record") -> PredictionRecord:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        return cls.from_dict(data, where)


# --- JSONL I/O -------------------------------------------------------------------


@dataclass
class ReadResult:
    """What :func:`read_jsonl` found: the records and whether the last line was cut off."""

    records: list[PredictionRecord]
    truncated_line: int | None = None  # 1-based line number of a dropped partial final line

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def append_jsonl(path: str | Path, record: PredictionRecord) -> None:
    """Append one record as one line, durably (single write, flush, fsync).

    If the file ends in a partial line (a previous run was killed mid-write), that
    fragment is cut off first, so the new record never merges into garbage.
    """
    if not isinstance(record, PredictionRecord):
        raise ValueError(f"append_jsonl: record must be a PredictionRecord, got {type(record).__name__}")
    path = Path(path)
    data = (record.to_json() + "\n").encode("utf-8")
    _cut_partial_last_line(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk; do not leave half a line
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"short write to {path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> ReadResult:
    """Read ``predictions.jsonl``.

    A final line without its newline that does not parse is the trace of an
    interrupted run: it is dropped and reported in ``truncated_line``. A bad line
    anywhere else is corruption and raises ``ValueError`` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    ends_with_newline = raw.endswith(b"\n")
    if ends_with_newline:
        lines = lines[:-1]
    records: list[PredictionRecord] = []
    truncated: int | None = None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last_partial = i == len(lines) and not ends_with_newline
        try:
            text = line.decode("utf-8")
            records.append(PredictionRecord.from_json(text, where=f"{path}:{i}"))
        except (ValueError, UnicodeDecodeError) as e:
            if is_last_partial:
                truncated = i
                continue
            raise ValueError(f"{path}: line {i} is not a valid prediction record: {e}") from None
    return ReadResult(records, truncated)


def _cut_partial_last_line(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        keep = content.rfind(b"\n") + 1  # 0 when the whole file is one partial line
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


# --- strict field checks -----------------------------------------------------------


def _check_fields(cls: type, data: Any, where: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` as keyword arguments of ``cls``: every field present except ``optional`` ones, nothing else."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    missing = sorted(name for name in fields if name not in data and name not in optional)
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    return dict(data)


def _as_str(value: Any, where: str, optional: bool = False, coerce_number: bool = False) -> Any:
    if value is None and optional:
        return None
    if coerce_number and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string{' or null' if optional else ''}, got {value!r}")
    return value


def _as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _as_float(value: Any, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number{' or null' if optional else ''}, got {value!r}")
    return float(value)


def _as_box(value: Any, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{where} must be [x1, y1, x2, y2] (4 numbers), got {value!r}")
    box = [_as_float(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"{where} must have x2 > x1 and y2 > y1, got {box}")
    return box


def _as_size(value: Any, where: str) -> list[int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok:
        raise ValueError(f"{where} must be [width, height] (2 non-negative integers), got {value!r}")
    return [int(v) for v in value]


def record_statistics(records: list[PredictionRecord], hit_iou: float = 0.5) -> dict[str, Any]:
    """Source-agnostic statistics of a set of records (the report and ``metrics.json`` share them).

    - ``accuracy`` = correct / n (plain mean; benchmark-official aggregation lives in
      ``mapo.data.scoring``).
    - ``tool_calls_per_sample`` = attempted tool calls / n.
    - ``invalid_call_rate`` = rejected or unparsable calls / attempted calls.
    - ``no_answer_rate`` = records with ``prediction is None`` / n.
    - ``semantic_score_mean`` over every scored observation.
    - Over the samples with target boxes (:func:`mapo.algo.crop_iou.zoom_summary` of their
      ``iou`` lists, the IoU definition training logs): ``crop_iou_mean`` over every
      valid crop; ``crop_hit_rate`` = share of those crops with IoU >= ``hit_iou``;
      ``first_crop_hit_rate`` = share of samples whose first valid crop hits;
      ``found_rate`` = share of samples some valid crop of which hits; ``recovered_rate``
      = share of samples whose first valid crop missed and a later one hit.
    Keys whose denominator is zero are ``None``.
    """
    n = len(records)
    calls = sum(r.tool_calls for r in records)
    invalid = sum(r.invalid_calls for r in records)
    scores = [s for r in records for s in r.semantic_scores]
    zoom = zoom_summary([r.iou for r in records if r.target_boxes], hit_iou)
    finish: dict[str, int] = {}
    for r in records:
        finish[r.finish_reason] = finish.get(r.finish_reason, 0) + 1
    return {
        "n": n,
        "accuracy": _ratio(sum(r.correct for r in records), n),
        "tool_calls_per_sample": _ratio(calls, n),
        "invalid_call_rate": _ratio(invalid, calls),
        "no_answer_rate": _ratio(sum(r.prediction is None for r in records), n),
        "semantic_score_mean": _ratio(sum(scores), len(scores)),
        # A left-to-right sum, as metrics.json has always had; zoom.iou_mean (np.mean) can differ in the last bit.
        "crop_iou_mean": _ratio(sum(zoom.ious), len(zoom.ious)),
        "crop_hit_rate": zoom.crop_hit_rate,
        "first_crop_hit_rate": zoom.first_zoom_hit_rate,
        "found_rate": zoom.found_rate,
        "recovered_rate": zoom.recovered_rate,
        "finish_reasons": dict(sorted(finish.items())),
    }


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None
