"""``mapo report``: a static HTML page of what the agent did.

Input is an eval directory (``predictions.jsonl``, optional ``metrics.json``, the
image and crop files the records name) or a training run directory
(``metrics.jsonl`` with one JSON object per step, optionally an ``eval/``
directory holding predictions). Output is ``index.html`` plus ``assets/`` (PNG
thumbnails with every zoom box drawn, crops, plots). The page needs no server and
no network: open it from ``file://``.

Boxes are drawn from ``bbox_original`` on the original image (scaled to the
thumbnail), the one coordinate convention of the project; the view-space box is
never re-mapped here.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mapo.data import open_image
from mapo.records import PredictionRecord, read_jsonl, record_statistics
from mapo.report import html as H
from mapo.report import plots as P

MARKER = ".mapo-report"  # marks a directory we wrote, so --force never wipes a stranger's files


@dataclass
class ReportInputs:
    """What was found in the source directory."""

    records: list[PredictionRecord] = field(default_factory=list)
    eval_dir: Path | None = None  # where record file names are resolved
    metrics: dict[str, Any] | None = None  # metrics.json of the eval
    train_rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl of a run
    notes: list[str] = field(default_factory=list)


def build_report(
    src: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_trajectories: int | None = 1000,
    thumb_px: int = 420,
    crop_px: int = 128,
    low_score: float = 0.2,
) -> Path:
    """Write ``out/index.html`` and ``out/assets/`` for an eval or run directory; return the page path.

    ``max_trajectories`` caps the number of cards (statistics still use every
    record); ``None`` shows all. An existing non-empty ``out`` is refused unless
    ``force``; with ``force`` only a directory previously written by this function
    is cleared.
    """
    src, out = Path(src), Path(out)
    if max_trajectories is not None and max_trajectories < 0:
        raise ValueError(f"max_trajectories must be >= 0 or None, got {max_trajectories}")
    if thumb_px < 32 or crop_px < 16:
        raise ValueError(f"thumb_px must be >= 32 and crop_px >= 16, got {thumb_px} and {crop_px}")
    inputs = load_inputs(src)
    _prepare_out(out, force)
    assets = out / "assets"
    assets.mkdir(parents=True)
    (out / MARKER).write_text("written by mapo report\n", encoding="utf-8")

    shown = inputs.records if max_trajectories is None else inputs.records[:max_trajectories]
    cards = []
    for i, rec in enumerate(shown):
        images = _card_images(rec, i, inputs.eval_dir, assets, thumb_px, crop_px, inputs.notes)
        cards.append(H.render_card(rec, images, low_score))
    page = H.Page(
        title=f"mapo report: {src.resolve().name}",
        source=str(src.resolve()),
        stats=record_statistics(inputs.records) if inputs.records else {"n": 0},
        metrics=inputs.metrics,
        plots=_plots(inputs, assets),
        cards=cards,
        total_records=len(inputs.records),
        notes=_dedupe(inputs.notes),
    )
    index = out / "index.html"
    index.write_text(H.render_page(page), encoding="utf-8")
    return index


def load_inputs(src: Path) -> ReportInputs:
    """Find predictions, eval metrics and training metrics under ``src``."""
    if not src.is_dir():
        raise ValueError(f"report source must be an eval or run directory, got {src} (not a directory)")
    inputs = ReportInputs()
    if (src / "metrics.jsonl").is_file():
        inputs.train_rows = _read_metric_rows(src / "metrics.jsonl", inputs.notes)
    eval_dir = _find_eval_dir(src)
    if eval_dir is not None:
        result = read_jsonl(eval_dir / "predictions.jsonl")
        inputs.records, inputs.eval_dir = result.records, eval_dir
        if result.truncated_line is not None:
            inputs.notes.append(
                f"predictions.jsonl line {result.truncated_line} was cut off (interrupted eval?) and is not shown"
            )
        if (eval_dir / "metrics.json").is_file():
            inputs.metrics = _read_json_object(eval_dir / "metrics.json")
        if eval_dir != src:
            inputs.notes.append(f"trajectories from {eval_dir}")
    if eval_dir is None and not inputs.train_rows:
        raise ValueError(
            f"{src} holds neither predictions.jsonl (an eval directory) nor metrics.jsonl (a training run)"
        )
    return inputs


def _find_eval_dir(src: Path) -> Path | None:
    """``src`` itself, else ``src/eval``, else the last ``src/eval/*`` (natural order) with predictions."""
    for cand in (src, src / "eval"):
        if (cand / "predictions.jsonl").is_file():
            return cand
    if (src / "eval").is_dir():
        subdirs = [d for d in (src / "eval").iterdir() if (d / "predictions.jsonl").is_file()]
        if subdirs:
            return max(subdirs, key=lambda d: _natural_key(d.name))
    return None


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _read_metric_rows(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    rows = []
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: skipped {bad} line(s) that are not JSON objects")
    return rows


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"report directory {out} exists and is not empty; pass --force to overwrite it")
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and was not written by mapo report (no {MARKER}); refusing to delete it "
                "even with --force: choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# --- images --------------------------------------------------------------------------


def _card_images(
    rec: PredictionRecord, i: int, eval_dir: Path | None, assets: Path, thumb_px: int, crop_px: int, notes: list[str]
) -> H.CardImages:
    images = H.CardImages()
    if eval_dir is None:
        return images
    if rec.image is not None:
        img = _open(eval_dir, rec.image, notes)
        if img is not None:
            thumb = _draw_boxes(img, rec, thumb_px)
            name = f"assets/t{i:05d}.png"
            thumb.save(assets.parent / name, optimize=True)
            images.thumb = name
    for j, turn in enumerate(rec.turns):
        crop = _open(eval_dir, turn.crop, notes) if turn.crop else None
        if crop is None:
            images.crops.append(None)
            continue
        crop.thumbnail((crop_px, crop_px))
        name = f"assets/c{i:05d}_{j}.png"
        crop.save(assets.parent / name, optimize=True)
        images.crops.append(name)
    return images


def _open(eval_dir: Path, rel: str, notes: list[str]) -> Image.Image | None:
    path = (eval_dir / rel).resolve()
    # A record may only name files inside its eval directory.
    if eval_dir.resolve() not in path.parents:
        notes.append(f"ignored image path outside the eval directory: {rel}")
        return None
    try:
        return open_image(path)
    except ValueError as e:
        notes.append(f"could not open {rel}: {str(e)[-160:]}")
        return None


def _draw_boxes(img: Image.Image, rec: PredictionRecord, thumb_px: int) -> Image.Image:
    """Thumbnail of the input with target boxes (yellow) and each valid zoom box (turn colour, numbered)."""
    orig_w, orig_h = rec.image_size if rec.image_size[0] and rec.image_size[1] else img.size
    img = img.copy()
    img.thumbnail((thumb_px, thumb_px))
    sx, sy = img.width / orig_w, img.height / orig_h  # the file may itself be a downscaled copy
    draw = ImageDraw.Draw(img)
    for box in rec.target_boxes:
        draw.rectangle(_scale(box, sx, sy), outline=H.TARGET_COLOUR, width=2)
    for j, turn in enumerate(rec.turns):
        if not (turn.valid and turn.bbox_original):
            continue
        colour = H.BOX_COLOURS[j % len(H.BOX_COLOURS)]
        x1, y1, x2, y2 = _scale(turn.bbox_original, sx, sy)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        draw.rectangle((x1, y1, x1 + 10, y1 + 12), fill=colour)
        draw.text((x1 + 2, y1), str(j), fill="white")
    return img


def _scale(box: list[float], sx: float, sy: float) -> tuple[float, float, float, float]:
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


# --- plots ---------------------------------------------------------------------------


def _plots(inputs: ReportInputs, assets: Path) -> list[tuple[str, str]]:
    plots: list[tuple[str, str]] = []
    if inputs.records:
        for caption, fn, name in (
            ("semantic scores", P.plot_semantic_scores, "semantic_scores.png"),
            ("tool calls per sample", P.plot_tool_calls, "tool_calls.png"),
            ("crop IoU", P.plot_iou, "crop_iou.png"),
        ):
            if fn(inputs.records, assets / name) is not None:
                plots.append((caption, f"assets/{name}"))
    if inputs.train_rows:
        x_label, series = P.numeric_series(inputs.train_rows)
        for k, (key, (xs, ys)) in enumerate(sorted(series.items())):
            name = f"curve_{k:03d}.png"
            P.plot_curve(key, xs, ys, x_label, assets / name)
            plots.append((f"training: {key}", f"assets/{name}"))
    return plots


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for s in items:
        seen[s] = seen.get(s, 0) + 1
    return [s if n == 1 else f"{s} (×{n})" for s, n in seen.items()]
