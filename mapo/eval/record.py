"""One played trajectory -> one :class:`~mapo.metrics.records.PredictionRecord`, with its image and crops saved."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from PIL import Image

from mapo.algo.crop_iou import crop_ious

from mapo.agent import tools
from mapo.eval.config import EvalConfig
from mapo.eval.samples import judge
from mapo.metrics.records import PredictionRecord, TurnRecord


def _stem(sample_id: str) -> str:
    """A file-name-safe, unique stem for a sample id (ids may hold '/', spaces, anything)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", sample_id)[:60]
    return f"{safe}-{hashlib.sha1(sample_id.encode('utf-8')).hexdigest()[:8]}"


def output_names(trajectory: Any) -> list[str]:
    """The files :func:`prediction_record` saves for ``trajectory``, relative to the eval directory."""
    stem = _stem(trajectory.sample.id)
    return [f"images/{stem}.jpg"] + [f"crops/{stem}_{j}.png" for j, crop in enumerate(trajectory.crops) if crop is not None]


def prediction_record(
    trajectory: Any, scores: list[float | None], out: Path, benchmark: str, config: EvalConfig
) -> PredictionRecord:
    """Turn one rollout :class:`~mapo.engine.rollout.Trajectory` into a record, saving its image and crops under ``out``.

    ``scores`` has one entry per observation (``K``): training's semantic score
    s_{i,k} (:mod:`mapo.algo.semantic`; ``s_missing`` for an error observation), or
    None each when no verifier was given.
    """
    sample = trajectory.sample
    stem = _stem(sample.id)
    image_rel = f"images/{stem}.jpg"
    _save_image_copy(sample.load_image(), out / image_rel, config.image_max_side)
    targets = [list(b.xyxy) for b in sample.target_boxes]
    turns: list[TurnRecord] = []
    K = len(trajectory.tool_calls)
    for j, text in enumerate(trajectory.assistant_texts):
        parsed = trajectory.turns[j] if j < len(trajectory.turns) else None
        turn = TurnRecord(text=text)
        if parsed is not None and parsed.tool_call is not None:  # any tool: its name and arguments as read
            turn.tool = parsed.tool_call.name or None
            turn.args = tools.args_json(parsed.tool_call.args)
        if j < K:  # this turn's tool call produced observation j + 1
            call = trajectory.tool_calls[j]
            turn.tool_call = True
            turn.valid = bool(call.valid)
            turn.label = call.label
            turn.error = call.error
            turn.bbox_view = _box(call.bbox_view if call.valid else call.raw_bbox)
            turn.bbox_original = _box(call.box_original)
            crop = trajectory.crops[j]
            if crop is not None:
                turn.crop = f"crops/{stem}_{j}.png"
                (out / turn.crop).parent.mkdir(parents=True, exist_ok=True)
                crop.save(out / turn.crop)
            turn.description = trajectory.descriptions[j]
            turn.semantic_score = scores[j]
        elif parsed is not None and parsed.tool_call is not None:
            # A call the loop did not execute (no turn left, or budget): shown, not counted as a call.
            turn.label = parsed.tool_call.label
            turn.bbox_view = _box(parsed.tool_call.bbox)
            turn.error = f"not executed (episode ended: {trajectory.finish_reason})"
        turns.append(turn)
    prediction, correct = judge(sample, trajectory.answer_text, benchmark)
    return PredictionRecord(
        id=sample.id,
        source=str(sample.meta.get("source", "")),
        question=sample.question,
        answer=sample.answer,
        prediction=prediction,
        correct=correct,
        finish_reason=trajectory.finish_reason,
        category=sample.category or None,
        options=list(sample.options),
        image=image_rel,
        image_size=list(trajectory.image_size),
        view_size=list(trajectory.view_size),
        target_boxes=targets,
        turns=turns,
        iou=crop_ious(trajectory),  # one per valid zoom-in crop, the definition training logs
        meta={"answer_text": trajectory.answer_text,
              **({"image_adjusted": sample.meta["image_adjusted"]} if "image_adjusted" in sample.meta else {})},
    )


def _box(box: Any) -> list[float] | None:
    if box is None:
        return None
    box = [float(v) for v in box]
    return box if box[2] > box[0] and box[3] > box[1] else None


def _save_image_copy(image: Image.Image, path: Path, max_side: int) -> None:
    """Save the original input, downscaled to ``max_side``, for the report (boxes stay in original pixels)."""
    img = image.copy()
    img.thumbnail((max_side, max_side))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90)
