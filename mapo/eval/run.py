"""The evaluation loop: play chunks of samples greedily, score, append records, write ``metrics.json``."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.agent import tools
from mapo.core.config import to_dict
from mapo.core.errors import DataError
from mapo.eval.config import EvalConfig
from mapo.eval.outdir import SKIPPED_FILE, _write_json_atomic, claim_out_dir, eval_fingerprint, make_out_dir, record_outputs
from mapo.eval.record import output_names, prediction_record
from mapo.eval.samples import _benchmark_of, load_eval_samples, official_scores
from mapo.agent.protocol import protocol_for_policy
from mapo.metrics.records import append_jsonl, read_jsonl, record_statistics
from mapo.engine.rollout import RolloutConfig
from mapo.algo.semantic import per_observation, semantic_scores


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
    if not isinstance(config, EvalConfig):
        raise ValueError(f"config must be an EvalConfig, got {type(config).__name__}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit}")
    out = Path(out)
    samples, load_report = load_eval_samples(data, limit)
    origins = load_report.pop("origins")
    if not samples and not load_report["skipped_rows"]:
        raise DataError(f"no samples in {data}: the source holds no rows")
    # Every row skipped at load: OUT still gets skipped_rows.jsonl and metrics.json saying why.
    benchmark = config.benchmark or (_benchmark_of(samples) if samples else str(load_report.get("format") or "unknown"))
    base = config.rollout_config()
    # Prompt the policy as it was trained (its mapo_protocol.json) unless the config sets a protocol.
    base = dataclasses.replace(base, protocol=protocol_for_policy(base.protocol, getattr(policy, "protocol", None)))
    created = make_out_dir(out, data)
    from mapo.core.run_dir import RunDirLock

    # One evaluation at a time in OUT: a second one would append the same samples again. Taken before the
    # fingerprint, which reads every weight byte, so a second eval is refused at once.
    with RunDirLock(out, created=created, what="eval directory"):
        fingerprint = eval_fingerprint(data, policy, verifier, config, base)
        claim_out_dir(out, fingerprint, overwrite=overwrite)
        return _run(samples, origins, load_report, data, out, policy, verifier, config, base, benchmark, limit,
                    progress, run_info, forced_turns, fingerprint)


def _run(samples, origins, load_report, data, out, policy, verifier, config, base, benchmark, limit, progress,
         run_info, forced_turns, fingerprint) -> EvalResult:
    """The loop of :func:`evaluate` once ``out`` is claimed and locked."""
    from mapo.policy.processor import pixel_range, policy_tool

    pred_path = out / "predictions.jsonl"
    done = {r.id for r in read_jsonl(pred_path)} if pred_path.exists() else set()
    todo = [s for s in samples if s.id not in done]
    skipped: list[dict[str, Any]] = []

    def skip(sample: Any, reason: str) -> None:
        file, row = origins.get(sample.id, (str(data), sample.id))
        skipped.append({"file": file, "row": row, "id": sample.id, "reason": reason, "stage": "play"})

    processor = getattr(policy, "processor", None)
    pixels = pixel_range(processor)
    total, finished = len(samples), len(samples) - len(todo)
    if progress:
        progress(finished, total)
    for chunk in _chunks_by_tool(todo, base, config):
        # Fitted for the policy's own patch x merge factor, the one the rollout applies (28 or 32 px).
        rc = dataclasses.replace(base, tool=policy_tool(_tool_for(chunk[0], base, config), processor))
        ready = _prepare(chunk, rc.tool, pixels, skip)
        trajectories = _play(ready, policy, rc, forced_turns, skip)
        scores = _semantic_scores(trajectories, verifier, config, rc.protocol.max_description_chars)
        for t, sc in zip(trajectories, scores):
            record_outputs(out, output_names(t))  # listed before they are written: --overwrite finds them all
            append_jsonl(pred_path, prediction_record(t, sc, out, benchmark, config))
        finished += len(chunk)
        if progress:
            progress(finished, total)
    records_read = read_jsonl(pred_path).records if pred_path.exists() else []  # none: every sample was skipped
    dropped = {row["id"] for row in skipped}
    scored = [s for s in samples if s.id not in dropped]
    ids = {s.id for s in scored}
    records = [r for r in records_read if r.id in ids]
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
        "skipped_reasons": commonest_reasons(skipped_rows),
        "run": {**(run_info or {}), "data": str(data), "limit": limit, "config": to_dict(config),
                "protocol": to_dict(base.protocol), "fingerprint": fingerprint},
    }
    _write_skipped_rows(out / SKIPPED_FILE, skipped_rows)
    _write_json_atomic(out / "metrics.json", metrics)
    return EvalResult(metrics, out, len(todo) - len(skipped))


def _write_skipped_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Every skipped row, one JSON object a line (``metrics.json`` lists the first :data:`MAX_LISTED_ROWS`)."""
    import json
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def commonest_reasons(rows: Sequence[dict[str, Any]], top: int = 5) -> list[dict[str, Any]]:
    """``[{"reason", "rows"}]``: the most frequent skip reasons, most frequent first.

    Reasons that differ only in numbers or in the sample's own id count as one; ``reason``
    is the first row's text of each.
    """
    from collections import Counter

    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for r in rows:
        text = str(r.get("reason", ""))
        key = _general_reason(text, str(r.get("id", "")))
        counts[key] += 1
        example.setdefault(key, text)
    return [{"reason": example[key], "rows": n} for key, n in counts.most_common(top)]


def _general_reason(reason: str, sample_id: str) -> str:
    import re

    if sample_id:
        reason = reason.replace(f"sample {sample_id}: ", "").replace(sample_id, "<id>")
    return re.sub(r"\d+", "N", reason)[:200]  # "image is 50x50" and "image is 60x60" are one reason


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
    from mapo.engine.rollout import rollout

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


def _tool_for(sample: Any, base: RolloutConfig, config: EvalConfig) -> tools.ToolConfig:
    if config.tool_from_data:
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
    """Per trajectory, per observation: training's s_{i,k} (:mod:`mapo.algo.semantic`); None without a verifier."""
    if verifier is None:
        return [[None] * t.num_observations for t in trajectories]
    sem = semantic_scores(
        trajectories, verifier, target=config.semantic_target, max_description_chars=max_description_chars,
        batch_size=config.verifier_batch_size,
    )
    return per_observation(sem, trajectories)


class ProgressLine:
    """Eval progress on stderr: a bar rewritten in place on a terminal (``eval [####....] 12/40  33s``),
    else (a log file, or ``plain``) one line per chunk with seconds per sample and the ETA."""

    def __init__(self, width: int = 30, plain: bool | None = None) -> None:
        from mapo.core.progress import is_terminal

        self.width = width
        self.plain = not is_terminal() if plain is None else plain
        self.started = time.perf_counter()
        self.first: int | None = None  # samples already done when this run started (resume)

    def __call__(self, done: int, total: int) -> None:
        from mapo.core.progress import format_duration

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
