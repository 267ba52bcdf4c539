"""``mapo report``: a static HTML page of what the agent did.

Input is an eval directory (``predictions.jsonl``, optional ``metrics.json``, the
image and crop files the records name), a training run directory
(``metrics.jsonl`` with one JSON object per step, optionally ``config.yaml`` and an
``eval/`` directory holding predictions), or a ``mapo demo`` directory (its ``rl/``
run, with the held-out evaluations before and after RL). Output is ``index.html``
plus ``assets/`` (PNG thumbnails with every zoom box drawn, crops, plots). The page
needs no server and no network: open it from ``file://``.

A run's page leads with the outcome (the before → after table when the demo's two
evaluations are there, else the key metrics of the last step) and a few chosen
curves; every other metric and the config are collapsed, because a first reader
needs the answer to "did RL help?" before every logged metric.

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

import yaml
from PIL import Image, ImageDraw

from mapo.data import open_image
from mapo.metrics.records import PredictionRecord, read_jsonl, record_statistics
from mapo.report import html as H
from mapo.report import plots as P
from mapo.report.rollouts import load_rollouts, render_rollouts

ROLLOUT_CARD_BASE = 1_000_000  # asset numbers of training-rollout cards (eval cards count from 0)
MARKER = ".mapo-report"  # marks a directory we wrote, so --force never wipes a stranger's files

# The curves a run's page opens with: logged key -> title in words, in page order.
CHOSEN_CURVES = {
    "reward_mean": "Reward, mean over sampled rollouts",
    "accuracy": "Accuracy of sampled rollouts",
    "hit_rate": "First-zoom hit rate (IoU ≥ 0.5)",
    "semantic_mean": "Semantic score of the descriptions",
    "kl": "KL to the reference policy",
    "ppo_kl": "KL between rollout and updated policy",  # shown only when kl is not logged
    "entropy": "Policy entropy per token",
    "eval/accuracy": "Held-out accuracy (periodic greedy eval)",
}
# Rows of the before/after table, in this order: keys of metrics.json["tools"]; labels and the
# arithmetic come from mapo.metrics.before_after.before_after, the function behind the demo's summary.md.
COMPARED = ("accuracy", "first_crop_hit_rate", "crop_iou_mean", "tool_calls_per_sample", "semantic_score_mean")


@dataclass
class ReportInputs:
    """What was found in the source directory."""

    records: list[PredictionRecord] = field(default_factory=list)
    eval_dir: Path | None = None  # where record file names are resolved
    metrics: dict[str, Any] | None = None  # metrics.json of the eval
    train_rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl of a run
    config: dict[str, Any] | None = None  # config.yaml of a run
    # demo: metrics.json before and after RL, the set they are on ("test" / "validation") and their two directories
    before_after: tuple[dict[str, Any], dict[str, Any], str, tuple[str, str]] | None = None
    notes: list[str] = field(default_factory=list)
    rollouts: list[PredictionRecord] = field(default_factory=list)  # a run's saved training rollouts
    rollouts_dir: Path | None = None  # where their file names are resolved (RUN_DIR/rollouts)


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
    x_label, series = P.numeric_series(inputs.train_rows)
    chosen = chosen_keys(series)
    metrics = inputs.metrics or {}
    page = H.Page(
        title=f"mapo report: {src.resolve().name}",
        source=str(src.resolve()),
        stats=record_statistics(inputs.records) if inputs.records else {"n": 0},
        metrics={k: v for k, v in metrics.items() if k != "run"},
        plots=_histograms(inputs.records, assets),
        cards=cards,
        total_records=len(inputs.records),
        notes=_dedupe(inputs.notes),
        curves=[_curve(key, series, x_label, assets, CHOSEN_CURVES[key]) for key in chosen],
        other_curves=[_curve(key, series, x_label, assets) for key in sorted(set(series) - set(chosen))],
        comparison=_comparison(inputs.before_after),
        final=[(CHOSEN_CURVES[k], k, series[k][0][-1], series[k][1][-1]) for k in chosen],
        x_label=x_label,
        config=_config_tables(inputs.config, metrics.get("run")),
        rollouts=render_rollouts(
            inputs.rollouts,
            # Card numbers past any eval card's, so their asset files never collide.
            lambda k, rec: _card_images(rec, ROLLOUT_CARD_BASE + k, inputs.rollouts_dir, assets, thumb_px, crop_px,
                                        inputs.notes),
            low_score,
        ),
    )
    index = out / "index.html"
    index.write_text(H.render_page(page), encoding="utf-8")
    return index


def load_inputs(src: Path) -> ReportInputs:
    """Find predictions, eval metrics and training metrics under ``src``."""
    if not src.is_dir():
        raise ValueError(f"report source must be an eval or run directory, got {src} (not a directory)")
    inputs = ReportInputs()
    demo = _demo_root(src)
    run = demo / "rl" if demo is not None else src
    if (run / "metrics.jsonl").is_file():
        inputs.train_rows = _read_metric_rows(run / "metrics.jsonl", inputs.notes)
    if (run / "config.yaml").is_file():
        inputs.config = _read_yaml_mapping(run / "config.yaml", inputs.notes)
    if demo is not None:
        inputs.before_after = _read_before_after(demo, inputs.notes)
    saved = load_rollouts(run, inputs.notes)
    if saved is not None:
        inputs.rollouts, inputs.rollouts_dir = saved
    eval_dir = _find_eval_dir(run)
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


def _demo_root(src: Path) -> Path | None:
    """The ``mapo demo`` directory that ``src`` is, or whose ``rl/`` run ``src`` is; else None.

    The layout is ``mapo.pipelines.demo.run_pipeline``'s: ``rl/`` (the training run, its final
    held-out eval in ``rl/eval/``) next to ``eval_before/`` (the warm start's eval). The
    demo builds its report from ``rl/``, so both spellings must find the pair.
    """
    src = src.resolve()
    for root in (src, src.parent):
        if (
            src in (root, root / "rl")
            and (root / "rl" / "metrics.jsonl").is_file()
            and (root / "eval_before" / "metrics.json").is_file()
        ):
            return root
    return None


# (set, directory before RL, directory after RL) of a demo, the test set first: the page leads with its figures.
DEMO_PAIRS = (("test", "eval_before_test", "rl/eval_test"), ("validation", "eval_before", "rl/eval"))


def _read_before_after(demo: Path, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any], str, tuple[str, str]] | None:
    """metrics.json before and after RL on the test set (else the validation set), the set's name and its
    two directories; None (and a note) when the validation pair is unusable and there is no test pair."""
    for which, before_dir, after_dir in DEMO_PAIRS[:1]:
        paths = (demo / before_dir / "metrics.json", demo / after_dir / "metrics.json")
        if all(path.is_file() for path in paths):
            try:
                pair = [_read_json_object(path) for path in paths]
            except ValueError:
                continue  # an unusable test pair: fall back to the validation pair, which says why it fails if it does
            if all(isinstance(d.get("tools"), dict) for d in pair):
                return pair[0], pair[1], which, (before_dir, after_dir)
    which, before_dir, after_dir = DEMO_PAIRS[-1]
    pair = []
    for path in (demo / before_dir / "metrics.json", demo / after_dir / "metrics.json"):
        if not path.is_file():
            notes.append(f"no before/after table: {path} is missing (the evaluation after RL has not finished?)")
            return None
        try:
            data = _read_json_object(path)
        except ValueError as e:
            notes.append(f"no before/after table: {e}")
            return None
        if not isinstance(data.get("tools"), dict):
            notes.append(f'no before/after table: {path} has no "tools" statistics (not written by mapo eval?)')
            return None
        pair.append(data)
    return pair[0], pair[1], which, (before_dir, after_dir)


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


def _read_yaml_mapping(path: Path, notes: list[str]) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        notes.append(f"{path.name} is not valid YAML and is not shown: {str(e)[:160]}")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} does not hold a mapping and is not shown")
        return None
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


def chosen_keys(logged: Any) -> list[str]:
    """The keys of :data:`CHOSEN_CURVES` that were logged, in page order; ``ppo_kl`` only without ``kl``."""
    keys = [k for k in CHOSEN_CURVES if k in logged]
    if "kl" in keys and "ppo_kl" in keys:  # kl (to the reference) is the one that says how far RL moved
        keys.remove("ppo_kl")
    return keys


def _histograms(records: list[PredictionRecord], assets: Path) -> list[H.Figure]:
    figs = []
    for title, fn, name in (
        ("semantic scores", P.plot_semantic_scores, "semantic_scores.png"),
        ("tool calls per sample", P.plot_tool_calls, "tool_calls.png"),
        ("crop IoU", P.plot_iou, "crop_iou.png"),
    ):
        if records and fn(records, assets / name) is not None:
            figs.append(H.Figure(f"assets/{name}", title))
    return figs


def _curve(key: str, series: dict[str, Any], x_label: str, assets: Path, title: str | None = None) -> H.Figure:
    """Plot one logged key; the file is named by the key's sorted position so names are stable and safe."""
    name = f"curve_{sorted(series).index(key):03d}.png"
    xs, ys = series[key]
    P.plot_curve(key, xs, ys, x_label, assets / name, title=title)
    return H.Figure(f"assets/{name}", title or key, key if title else "")


def _comparison(pair: tuple[dict[str, Any], dict[str, Any]] | None) -> H.Comparison | None:
    if pair is None:
        return None
    # Imported here: mapo.pipelines.demo pulls in torch, which only a demo directory's report needs.
    from mapo.metrics.before_after import before_after, verdict

    before, after, which, dirs = pair
    by_key = {r["key"]: r for r in before_after(before, after)}
    rows = [by_key[k] for k in COMPARED]
    n = after["tools"].get("n")
    n = n if isinstance(n, int) and n > 0 else None
    return H.Comparison(rows=rows, verdict=verdict(rows, n) if n else "", n=n, which=which, dirs=dirs)


def _config_tables(config: dict[str, Any] | None, eval_run: Any) -> list[tuple[str, dict[str, Any]]]:
    """The run's config.yaml and the evaluation's own settings (metrics.json "run"), whichever exist."""
    tables = []
    if config:
        tables.append(("config.yaml of the training run", config))
    if isinstance(eval_run, dict) and eval_run:
        tables.append(('settings of the evaluation (metrics.json "run")', eval_run))
    return tables


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for s in items:
        seen[s] = seen.get(s, 0) + 1
    return [s if n == 1 else f"{s} (×{n})" for s, n in seen.items()]
