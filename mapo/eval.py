"""``mapo eval``: play the agent greedily on a benchmark and score it the benchmark's way.

For every sample the agent loop (:func:`mapo.rollout.rollout`, one greedy episode,
the same tool and coordinate code as training) produces a trajectory; the
verifier scores each (description, crop) pair; the record (``mapo.records``) is
appended to ``OUT/predictions.jsonl`` with the input image (a downscaled copy)
and every crop saved next to it. ``OUT/metrics.json`` holds the benchmark's
official aggregation (``mapo.data.scoring``: V* per category, HR-Bench per
cycle, MME-RealWorld per task/subtask/category), tool statistics
(``mapo.records.record_statistics``), crop IoU where target boxes exist, and
the rows of the source that could not be loaded.

Resumable: records already in ``predictions.jsonl`` are skipped, so an
interrupted eval continues where it stopped (a half-written last line is cut
off). Samples are processed in chunks of ``batch_size``; an interruption loses
at most the chunk in flight. ``OUT/eval.json`` holds the fingerprint of the
model, the data and the config; an ``OUT`` holding another evaluation is refused
(``overwrite=True`` clears it first), so predictions of two models never merge.

One bad sample never aborts the evaluation: a row that cannot be loaded, an
image that does not decode in full, more than 26 options, or a rollout that
fails on that sample alone, is skipped and listed in ``metrics.json``
(``skipped_rows``: file, row, reason) and left out of the official score. Images
the policy cannot take as they are but that can be padded or upscaled into its
pixel range are played (``mapo.data.prepare``); their record's
``meta.image_adjusted`` says how.

Decisions and departures:

- The extracted answer is read from the ``<answer>`` block only. A model that
  never answers is scored wrong (``prediction`` null, ``finish_reason`` kept);
  DeepEyes' own eval falls back to the whole last response, which lets a model
  that never closes its answer tag still score.
- Multiple choice uses ``extract_choice`` (every benchmark; ``scoring`` adds
  the same aggregation read as lmms-eval or VLMEvalKit read it, see
  ``mapo.data.harness``); open questions (DeepEyes parquet) use
  ``mapo.reward.answer_matches`` (normalised exact match). There is no official
  aggregation for DeepEyes data: accuracy overall and per category is reported.
- Synthetic samples carry the pixel budgets their task was designed for
  (``meta`` view_side/obs_side); with ``tool_from_samples`` those budgets are used,
  as in SFT and RL. Real benchmarks use ``rollout.tool``.
- The ``deepeyes`` preset reproduces DeepEyes' prompts and observation text
  (``eval/eval_vstar.py`` of Visual-Agent/DeepEyes) and its pixel budgets
  (max 16384·28·28); MAPO's description tag is still parsed but not asked for,
  so DeepEyes-style models get ``s_missing`` for every observation.
- Semantic scores are training's (:mod:`mapo.semantic`: the same
  ``semantic_target``, description-length guard and ``s_missing`` rules), so
  the eval's ``semantic_score_mean`` is the quantity MAPO optimises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from mapo import tools
from mapo.config import knob, to_dict
from mapo.protocol import ProtocolConfig, protocol_for_policy
from mapo.records import PredictionRecord, TurnRecord, append_jsonl, read_jsonl, record_statistics
from mapo.rollout import RolloutConfig
from mapo.semantic import per_observation, semantic_scores

DEEPEYES_SYSTEM = """You are a helpful assistant.

# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type":"function","function":{"name":"image_zoom_in_tool","description":"Zoom in on a specific region of an image by cropping it based on a bounding box (bbox) and an optional object label.","parameters":{"type":"object","properties":{"bbox_2d":{"type":"array","items":{"type":"number"},"minItems":4,"maxItems":4,"description":"The bounding box of the region to zoom in, as [x1, y1, x2, y2], where (x1, y1) is the top-left corner and (x2, y2) is the bottom-right corner."},"label":{"type":"string","description":"The name or label of the object in the specified bounding box (optional)."}},"required":["bbox"]}}}
</tools>

# How to call a tool
Return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>

**Example**:
<tool_call>
{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 100, 200], "label": "the apple on the desk"}}
</tool_call>"""
DEEPEYES_INSTRUCTION = (
    "Think first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  "
    "<think>...</think>  <tool_call>...</tool_call> (if tools needed)  <answer>...</answer> "
)
DEEPEYES_MAX_PIXELS = 16384 * 28 * 28


def deepeyes_rollout(base: RolloutConfig) -> RolloutConfig:
    """``base`` with DeepEyes' prompts, observation text and pixel budgets."""
    protocol = dataclasses.replace(
        base.protocol,
        system_template=DEEPEYES_SYSTEM,
        answer_instruction=DEEPEYES_INSTRUCTION,
        observation_instruction=DEEPEYES_INSTRUCTION,
    )
    tool = dataclasses.replace(
        base.tool, view_min_pixels=4 * 28 * 28, view_max_pixels=DEEPEYES_MAX_PIXELS,
        obs_min_pixels=4 * 28 * 28, obs_max_pixels=DEEPEYES_MAX_PIXELS,
    )
    return dataclasses.replace(base, protocol=protocol, tool=tool)


def _default_rollout() -> RolloutConfig:
    return RolloutConfig(group_size=1, greedy=True, batch_size=8)


@dataclass(frozen=True)
class EvalConfig:
    """How ``mapo eval`` plays and records the agent."""

    preset: Literal["mapo", "deepeyes"] = knob("mapo", "protocol preset: mapo's own, or DeepEyes' prompts and budgets")
    rollout: RolloutConfig = knob(factory=_default_rollout, help="agent loop: greedy, one episode per sample")
    tool_from_samples: bool = knob(True, "use the pixel budgets synthetic samples were made for (meta view_side/obs_side)")
    benchmark: str | None = knob(None, "scorer (vstar, hrbench, mme, synth); None: from the samples' meta source")
    image_max_side: int = knob(768, "long side of the input-image copy saved for the report (boxes stay in original px)")
    hit_iou: float = knob(0.5, "a crop hits a target when IoU >= this")
    verifier_batch_size: int = knob(64, "pairs per verifier forward")
    semantic_target: Literal["description", "label", "both"] = knob(
        "description", "what the verifier scores against each crop, as in `mapo train` (mapo.semantic)"
    )
    scoring: tuple[str, ...] = knob(
        (), "also score multiple choice the way these harnesses read answers (lmms-eval, vlmevalkit, mapo): "
        "metrics.json 'scoring'; 'official' always uses mapo's rule"
    )

    def __post_init__(self) -> None:
        if self.preset not in ("mapo", "deepeyes"):
            raise ValueError(f"preset must be 'mapo' or 'deepeyes', got {self.preset!r}")
        if self.rollout.group_size != 1:
            raise ValueError(
                f"rollout.group_size must be 1 for eval (one episode per sample is scored), got {self.rollout.group_size}"
            )
        if self.image_max_side < 32:
            raise ValueError(f"image_max_side must be >= 32, got {self.image_max_side}")
        if not 0.0 < self.hit_iou <= 1.0:
            raise ValueError(f"hit_iou must be in (0, 1], got {self.hit_iou}")
        from mapo.data.harness import HARNESSES

        unknown = [name for name in self.scoring if name not in HARNESSES]
        if unknown:
            raise ValueError(f"scoring: unknown {unknown}; choose from {', '.join(HARNESSES)}")

    def rollout_config(self) -> RolloutConfig:
        return deepeyes_rollout(self.rollout) if self.preset == "deepeyes" else self.rollout


# ----------------------------------------------------------------------------- samples


SYNTH_SPEC = re.compile(r"^synth:(\d+)(?::([A-Za-z_]\w*))?(?::(\d+))?$")  # level checked against synth.LEVELS
MAX_SYNTH_SAMPLES = 100_000  # synthetic samples are built in memory: a bound, not a typo's worth of RAM


def load_eval_samples(data: str, limit: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Samples of ``data`` and what loading reported (``loaded``, ``skipped``, ``issues``, ``skipped_rows``,
    and ``origins``: sample id -> (file, row)).

    ``data`` is anything :func:`mapo.data.load_samples` reads (V* folder, HR-Bench
    TSV, MME-RealWorld JSON, DeepEyes parquet, ``mapo data synth`` output), or
    ``synth:N[:LEVEL[:SEED]]`` to generate N synthetic samples in memory
    (default level easy, seed 1000003: held out from SFT's training seed 0).
    """
    m = SYNTH_SPEC.match(str(data))
    if m:
        from mapo.data import synth

        if m.group(2) is not None and m.group(2) not in synth.LEVELS:
            raise ValueError(f"--data {data!r}: unknown level {m.group(2)!r}; choose from {', '.join(synth.LEVELS)}")
        n = int(m.group(1)) if limit is None else min(int(m.group(1)), limit)
        if n > MAX_SYNTH_SAMPLES:
            raise ValueError(
                f"--data {data}: {n} synthetic samples would be built in memory, over the bound of "
                f"{MAX_SYNTH_SAMPLES}; pass --limit (at most {MAX_SYNTH_SAMPLES}) or write them with `mapo data synth`"
            )
        samples = synth.generate(n, seed=int(m.group(3) or 1000003), config=m.group(2) or "easy")
        origins = {s.id: (str(data), i) for i, s in enumerate(samples)}
        return samples, {"source": str(data), "format": "synth", "loaded": len(samples), "skipped": 0, "issues": [],
                         "skipped_rows": [],
                         "origins": origins}
    if str(data).startswith("synth:"):
        from mapo.data.synth import LEVELS

        raise ValueError(f"--data {data!r}: write synthetic sources as synth:N[:LEVEL[:SEED]], LEVEL one of {', '.join(LEVELS)}")
    from mapo.data import load_samples

    result = load_samples(_synth_output_source(data), limit=limit)
    report = result.report
    return list(result), {
        "source": report.source or str(data),
        "format": report.format,
        "loaded": report.loaded,
        "skipped": report.skipped,
        "issues": [str(i) for i in report.issues[:100]],
        "skipped_rows": [{"file": i.file, "row": i.row, "reason": i.reason, "stage": "load"} for i in report.issues],
        "origins": dict(report.origins),
    }


def _synth_output_source(data: str) -> str:
    """The folder ``mapo data synth --out DIR`` wrote: its V* copy (else the first format written); others as given."""
    root = Path(data)
    if not (root / "synth_config.yaml").is_file():
        return data
    for fmt in ("vstar", "hrbench", "mme", "deepeyes"):
        if (root / fmt).is_dir():
            return str(root / fmt)
    return data


# ----------------------------------------------------------------------------- judging


def judge(sample: Any, answer_text: str | None, benchmark: str) -> tuple[str | None, bool]:
    """``(prediction, correct)`` of one sample from its ``<answer>`` text (None: never answered)."""
    from mapo.data.scoring import predicted_choice
    from mapo.reward import answer_matches

    if answer_text is None:
        return None, False
    if benchmark == "mme" or sample.options:  # multiple choice: the official rule (mapo.data.scoring)
        letter = predicted_choice(sample, answer_text, benchmark)
        return letter, letter == sample.answer
    return answer_text.strip(), answer_matches(answer_text, sample.answer)


def official_scores(
    samples: Sequence[Any], records: Sequence[PredictionRecord], benchmark: str, scoring: str = "mapo"
) -> dict[str, Any]:
    """The benchmark's aggregation over ``samples`` (a sample without a record counts as wrong).

    ``scoring``: whose reading of a multiple-choice answer (``mapo.data.harness.HARNESSES``).
    """
    from mapo.data.scoring import SCORERS

    answers = {r.id: _answer_text(r) for r in records}
    predictions = {k: v for k, v in answers.items() if v is not None}
    if benchmark in SCORERS:
        return SCORERS[benchmark](list(samples), predictions, scoring)
    # No official rule (DeepEyes training data, open questions): plain accuracy, per category.
    by_id = {r.id: r for r in records}
    groups: dict[str, list[bool]] = defaultdict(list)
    flags = []
    for s in samples:
        ok = by_id[s.id].correct if s.id in by_id else False
        flags.append(ok)
        groups[s.category].append(ok)
    return {
        "overall": sum(flags) / len(flags) if flags else float("nan"),
        "per_category": {k: sum(v) / len(v) for k, v in sorted(groups.items())},
        "n": len(flags),
        "missing": sum(s.id not in by_id for s in samples),
        "rule": "exact match after normalisation (no official aggregation for this source)",
    }


def _answer_text(record: PredictionRecord) -> str | None:
    return record.meta.get("answer_text")


# ----------------------------------------------------------------------------- records


def _stem(sample_id: str) -> str:
    """A file-name-safe, unique stem for a sample id (ids may hold '/', spaces, anything)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", sample_id)[:60]
    return f"{safe}-{hashlib.sha1(sample_id.encode('utf-8')).hexdigest()[:8]}"


def trajectory_record(
    trajectory: Any, scores: list[float | None], out: Path, benchmark: str, config: EvalConfig
) -> PredictionRecord:
    """Turn one rollout :class:`~mapo.rollout.Trajectory` into a record, saving its image and crops under ``out``.

    ``scores`` has one entry per observation (``K``): training's semantic score
    s_{i,k} (:mod:`mapo.semantic`; ``s_missing`` for an error observation), or
    None each when no verifier was given.
    """
    sample = trajectory.sample
    stem = _stem(sample.id)
    image_rel = f"images/{stem}.jpg"
    _save_image_copy(sample.load_image(), out / image_rel, config.image_max_side)
    targets = [list(b.xyxy) for b in sample.target_boxes]
    turns: list[TurnRecord] = []
    ious: list[float] = []
    K = len(trajectory.tool_calls)
    for j, text in enumerate(trajectory.assistant_texts):
        parsed = trajectory.turns[j] if j < len(trajectory.turns) else None
        turn = TurnRecord(text=text)
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
            if turn.valid and turn.bbox_original is not None and targets:
                ious.append(max(tools.box_iou(turn.bbox_original, t) for t in targets))
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
        iou=ious,
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


# ----------------------------------------------------------------------------- the run


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    out: Path
    evaluated: int  # samples played in this call (the rest were resumed)


def evaluate(
    data: str,
    out: str | Path,
    *,
    policy: Any,
    verifier: Any | None = None,
    config: EvalConfig = EvalConfig(),
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    run_info: dict[str, Any] | None = None,
    forced_turns: Callable[[Any, int], str | None] | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Evaluate ``policy`` on ``data`` into ``out`` (resuming whatever is already there).

    Args:
        data: a source for :func:`load_eval_samples`.
        out: eval directory: ``predictions.jsonl``, ``metrics.json``, ``eval.json``, ``images/``, ``crops/``.
        policy: a :class:`mapo.policy.Policy`.
        verifier: a :class:`mapo.verifier.base.Verifier` or None (semantic scores stay null).
        progress: called as ``progress(done, total)`` after each chunk.
        run_info: extra keys (model path, …) stored in ``metrics.json["run"]``.
        forced_turns: test/demo hook ``(sample, turn) -> text | None`` teacher-forcing
            assistant turns through the rollout (e.g. the oracle's transcript).
        overwrite: clear an ``out`` that holds an evaluation of another model, data or
            config instead of refusing it.
    """
    from mapo.data.prepare import pixel_range

    if not isinstance(config, EvalConfig):
        raise ValueError(f"config must be an EvalConfig, got {type(config).__name__}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit}")
    out = Path(out)
    samples, load_report = load_eval_samples(data, limit)
    origins = load_report.pop("origins")
    if not samples:
        raise ValueError(f"no samples could be loaded from {data}: {load_report['issues'][:3]}")
    benchmark = config.benchmark or _benchmark_of(samples)
    base = config.rollout_config()
    # Prompt the policy as it was trained (its mapo_protocol.json) unless the config sets a protocol.
    base = dataclasses.replace(base, protocol=protocol_for_policy(base.protocol, getattr(policy, "protocol", None)))
    fingerprint = eval_fingerprint(data, policy, verifier, config, base)
    claim_out_dir(out, fingerprint, overwrite=overwrite)
    pred_path = out / "predictions.jsonl"
    done = {r.id for r in read_jsonl(pred_path)} if pred_path.exists() else set()
    todo = [s for s in samples if s.id not in done]
    skipped: list[dict[str, Any]] = []

    def skip(sample: Any, reason: str) -> None:
        file, row = origins.get(sample.id, (str(data), sample.id))
        skipped.append({"file": file, "row": row, "id": sample.id, "reason": reason, "stage": "play"})

    pixels = pixel_range(getattr(policy, "processor", None))
    total, finished = len(samples), len(samples) - len(todo)
    if progress:
        progress(finished, total)
    for chunk in _chunks_by_tool(todo, base, config):
        rc = dataclasses.replace(base, tool=_tool_for(chunk[0], base, config))
        ready = _prepare(chunk, rc.tool, pixels, skip)
        trajectories = _play(ready, policy, rc, forced_turns, skip)
        scores = _semantic_scores(trajectories, verifier, config, rc.protocol.max_description_chars)
        for t, sc in zip(trajectories, scores):
            append_jsonl(pred_path, trajectory_record(t, sc, out, benchmark, config))
        finished += len(chunk)
        if progress:
            progress(finished, total)
    read = read_jsonl(pred_path)
    dropped = {row["id"] for row in skipped}
    scored = [s for s in samples if s.id not in dropped]
    ids = {s.id for s in scored}
    records = [r for r in read.records if r.id in ids]
    skipped_rows = load_report.pop("skipped_rows") + skipped
    metrics = {
        "benchmark": benchmark,
        "official": official_scores(scored, records, benchmark),
        "scoring": {name: official_scores(scored, records, benchmark, name) for name in config.scoring},
        "tools": record_statistics(records, hit_iou=config.hit_iou),
        "data": {**load_report, "skipped_at_play": len(skipped),
                 "adjusted_images": sum("image_adjusted" in r.meta for r in records)},
        "broken_rows": len(skipped_rows),
        "skipped_rows": skipped_rows[:MAX_LISTED_ROWS],
        "run": {**(run_info or {}), "data": str(data), "limit": limit, "config": to_dict(config),
                "protocol": to_dict(base.protocol), "fingerprint": fingerprint},
    }
    _write_json_atomic(out / "metrics.json", metrics)
    return EvalResult(metrics, out, len(todo) - len(skipped))


MAX_LISTED_ROWS = 1000  # skipped rows listed in metrics.json (all are counted in broken_rows)


def _prepare(chunk: Sequence[Any], tool: tools.ToolConfig, pixels: tuple[int, int] | None,
             skip: Callable[[Any, str], None]) -> list[Any]:
    """The chunk's samples made playable (:func:`mapo.data.prepare.prepare_sample`); the others are skipped."""
    from mapo.data.prepare import prepare_sample

    ready = []
    for sample in chunk:
        try:
            ready.append(prepare_sample(sample, tool, pixels))
        except ValueError as e:
            skip(sample, str(e))
    return ready


def _play(samples: list[Any], policy: Any, rc: RolloutConfig, forced_turns: Callable | None,
          skip: Callable[[Any, str], None]) -> list[Any]:
    """Greedy trajectories of ``samples``; when the batch fails, each sample alone, skipping the ones that fail."""
    from mapo.rollout import rollout

    def run(batch: list[Any]) -> list[Any]:
        forced = None
        if forced_turns is not None:
            forced = lambda group, member, turn: forced_turns(batch[group], turn)  # noqa: E731
        return rollout(batch, policy, rc, forced_turns=forced)

    if not samples:
        return []
    try:
        return run(samples)
    except (ValueError, OSError) as e:
        if len(samples) == 1:
            skip(samples[0], f"the rollout failed on this sample: {e}")
            return []
    trajectories = []
    for sample in samples:  # find the sample that broke the batch; the others are played alone
        try:
            trajectories += run([sample])
        except (ValueError, OSError) as e:
            skip(sample, f"the rollout failed on this sample: {e}")
    return trajectories


# ----------------------------------------------------------------------------- the eval directory


EVAL_FILE = "eval.json"
OUTPUTS = ("predictions.jsonl", "metrics.json", EVAL_FILE, "images", "crops")
# Config keys that do not change what is evaluated (batching, the size of the report's image copies).
FINGERPRINT_IGNORE = ("verifier_batch_size", "image_max_side")


def eval_fingerprint(data: str, policy: Any, verifier: Any | None, config: EvalConfig, rollout: RolloutConfig) -> dict[str, str]:
    """``{"model", "verifier", "data", "config"}``: short hashes of what an evaluation's records depend on.

    The model and verifier are hashed from their weights in memory (names, shapes,
    dtypes and the first and last values of every tensor: cheap, and two
    checkpoints differ there); the data from its files (:func:`data_fingerprint`);
    the config from its YAML form with the resolved protocol, without
    :data:`FINGERPRINT_IGNORE` and the rollout batch size.
    """
    cfg = {k: v for k, v in to_dict(config).items() if k not in FINGERPRINT_IGNORE}
    cfg["rollout"] = {k: v for k, v in to_dict(rollout).items() if k != "batch_size"}
    return {
        "model": _module_fingerprint(getattr(policy, "model", None)),
        "verifier": _module_fingerprint(getattr(verifier, "model", None)) if verifier is not None else "none",
        "data": data_fingerprint(data),
        "config": _digest(json.dumps(cfg, sort_keys=True, default=str).encode()),
    }


def _module_fingerprint(module: Any) -> str:
    import torch

    if not isinstance(module, torch.nn.Module):
        return "unknown"
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        ends = torch.cat([flat[:32], flat[-32:]]).float().cpu().numpy().tobytes()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode() + ends)
    return h.hexdigest()[:16]


def data_fingerprint(data: str) -> str:
    """Hash of a data source: ``synth:N:LEVEL:SEED`` without N (sample i depends only on level,
    seed and i); a file or folder from every file's name, size, first and last 64 KiB."""
    m = SYNTH_SPEC.match(str(data))
    if m:
        return f"synth:{m.group(2) or 'easy'}:{m.group(3) or 1000003}"
    path = Path(data)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
            if f.stat().st_size > 1 << 17:
                fh.seek(-(1 << 16), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def claim_out_dir(out: Path, fingerprint: dict[str, str], *, overwrite: bool) -> None:
    """Make ``out`` the directory of this evaluation, refusing one that holds another.

    A directory whose ``eval.json`` has the same fingerprint is resumed. One with a
    different fingerprint, or predictions without a fingerprint, is refused unless
    ``overwrite``, which deletes the previous outputs (:data:`OUTPUTS`) first.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")  # a read-only directory that exists fails here, not after the first chunk
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write the eval directory {out}: {e.strerror or e}") from None
    meta_path = out / EVAL_FILE
    previous = _read_fingerprint(meta_path)
    has_records = (out / "predictions.jsonl").exists()
    if previous == fingerprint:
        return
    if previous is not None or has_records:
        if not overwrite:
            what = (f"an evaluation of a different {', '.join(k for k in fingerprint if previous.get(k) != fingerprint[k])}"
                    if previous else "predictions without a fingerprint (eval.json)")
            raise ValueError(
                f"{out} holds {what}; merging them would mix two evaluations. Choose another --out, or pass "
                "--overwrite (overwrite=True) to replace it"
            )
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    _write_json_atomic(meta_path, {"fingerprint": fingerprint})


def _read_fingerprint(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); pass --overwrite to start this evaluation again") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is damaged (fingerprint is not a mapping); pass --overwrite to start again")
    return found


def _benchmark_of(samples: Sequence[Any]) -> str:
    sources = sorted({str(s.meta.get("source", "")) for s in samples})
    if len(sources) != 1:
        raise ValueError(f"samples come from several sources {sources}; set benchmark=... in the eval config")
    return sources[0]


def _tool_for(sample: Any, base: RolloutConfig, config: EvalConfig) -> tools.ToolConfig:
    if config.tool_from_samples and config.preset == "mapo":
        from mapo.data.task import tool_config_for

        if sample.task is not None:
            return tool_config_for(sample)
    return base.tool


def _chunks_by_tool(samples: Sequence[Any], base: RolloutConfig, config: EvalConfig):
    """Chunks of at most ``batch_size`` samples sharing one tool config, in input order."""
    chunk: list[Any] = []
    key = None
    for s in samples:
        k = _tool_for(s, base, config)
        if chunk and (k != key or len(chunk) == base.batch_size):
            yield chunk
            chunk = []
        chunk.append(s)
        key = k
    if chunk:
        yield chunk


def _semantic_scores(
    trajectories: Sequence[Any], verifier: Any | None, config: EvalConfig, max_description_chars: int
) -> list[list[float | None]]:
    """Per trajectory, per observation: training's s_{i,k} (:mod:`mapo.semantic`); None without a verifier."""
    if verifier is None:
        return [[None] * t.num_observations for t in trajectories]
    sem = semantic_scores(
        trajectories, verifier, target=config.semantic_target, max_description_chars=max_description_chars,
        batch_size=config.verifier_batch_size,
    )
    return per_observation(sem, trajectories)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    """NaN (an empty category) is not JSON: write null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class ProgressLine:
    """Eval progress on stderr: a bar rewritten in place on a terminal (``eval [####....] 12/40  33s``),
    else (a log file, or ``plain``) one line per chunk with seconds per sample and the ETA."""

    def __init__(self, width: int = 30, plain: bool | None = None) -> None:
        from mapo.progress import is_terminal

        self.width = width
        self.plain = not is_terminal() if plain is None else plain
        self.started = time.perf_counter()
        self.first: int | None = None  # samples already done when this run started (resume)

    def __call__(self, done: int, total: int) -> None:
        from mapo.progress import format_duration

        elapsed = time.perf_counter() - self.started
        if self.plain:
            self.first = done if self.first is None else self.first
            per = elapsed / (done - self.first) if done > self.first else None
            rate = f"  {per:.2f} s/sample  eta {format_duration(per * (total - done))}" if per else ""
            sys.stderr.write(f"eval {done}/{total}  {format_duration(elapsed)}{rate}\n")
            sys.stderr.flush()
            return
        fill = int(self.width * done / max(total, 1))
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\reval [{'#' * fill}{'.' * (self.width - fill)}] {done}/{total}  {elapsed:.0f}s{end}")
        sys.stderr.flush()
