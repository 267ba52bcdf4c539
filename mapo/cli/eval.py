"""``mapo eval --data SOURCE --model DIR [--verifier DIR] --out DIR``: greedy agent evaluation."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.cli._config import add_config_arguments
    from mapo.data.harness import HARNESSES
    from mapo.data.synth import LEVELS
    from mapo.eval.config import PRESETS

    parser.add_argument("--data", help="V* folder, HR-Bench .tsv, MME-RealWorld .json, DeepEyes .parquet, "
                        f"`mapo data synth` output, or synth:N[:LEVEL[:SEED]] with LEVEL one of {', '.join(LEVELS)}")
    parser.add_argument("--model", help="local policy directory (a Qwen2.5-VL / Qwen3-VL checkpoint, RUN_DIR/final of "
                        "mapo sft or train), 'default' (the shipped warm start) or shipped:NAME; its processor's pixel "
                        "range and its token limits are the defaults (docs/eval.md)")
    parser.add_argument("--verifier", default=None, help="local CLIP/SigLIP directory for semantic scores (optional), "
                        "'default' (the shipped verifier) or shipped:NAME")
    parser.add_argument("--out", help="eval directory; an existing one of the same model, data and config is resumed "
                        "(finished samples are skipped); one holding another evaluation is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --out that holds an evaluation of another model, data or config")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--batch-size", type=int, default=None, help="episodes generated together (rollout.batch_size)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="protocol preset layered over the model's settings: "
                        + "; ".join(f"{name}: {p.help}" for name, p in PRESETS.items()))
    parser.add_argument("--scoring", action="append", default=None, choices=HARNESSES,
                        help="also read multiple-choice answers as this harness does (repeatable); shorthand for "
                        "scoring=[...]; metrics.json 'scoring' (docs/eval.md)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain log lines instead of a progress bar (the default when output is not a terminal)")
    add_config_arguments(parser, example="rollout.max_turns=6 rollout.tool.view_max_pixels=1003520")


def run(args: argparse.Namespace) -> int:
    from mapo.eval import ProgressLine, evaluate

    from mapo.cli._config import overrides

    extra = []
    if args.batch_size is not None:
        extra.append(f"rollout.batch_size={args.batch_size}")
    if args.scoring:
        extra.append(f"scoring={json.dumps(args.scoring)}")
    try:
        if args.show_config:
            return _show_config(args, overrides(args, extra))
        config, notes = _load_config(args.config, overrides(args, extra), model=args.model, preset=args.preset)
        missing = [f"--{n}" for n in ("data", "model", "out") if getattr(args, n) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required")
        import torch

        from mapo.cli.device_check import check_device, check_threads
        from mapo.policy.default import load_named_policy

        check_device(args.device)
        if check_threads(args.threads):
            torch.set_num_threads(args.threads)
        if notes:
            print(f"mapo eval: from the model: {'; '.join(notes)} (--show-config prints every value)", file=sys.stderr)
        policy = load_named_policy(args.model, dtype=args.dtype, device=args.device)
        verifier = _load_verifier(args.verifier, args.device) if args.verifier else None
        with _removed_if_nothing_written(args.out):
            result = evaluate(
                args.data, args.out, policy=policy, verifier=verifier, config=config, limit=args.limit,
                progress=ProgressLine(plain=True if args.no_progress else None),
                run_info={"model": str(args.model), "verifier": args.verifier, "settings_from_model": notes},
                overwrite=args.overwrite,
            )
    except (ValueError, OSError) as e:  # OSError: an --out that cannot be written (read-only, full disk)
        print(f"mapo eval: {e}", file=sys.stderr)
        return 2
    _print_skipped(result.metrics)
    if not result.metrics["official"].get("n") and result.metrics["broken_rows"]:
        print(f"mapo eval: {nothing_evaluated(result.metrics, result.out)}", file=sys.stderr)
        return 1
    official, stats = result.metrics["official"], result.metrics["tools"]
    print(json.dumps({"overall": official.get("overall"), "n": official.get("n"),
                      "broken_rows": result.metrics["broken_rows"], **{k: stats[k] for k in (
                          "tool_calls_per_sample", "invalid_call_rate", "crop_hit_rate", "semantic_score_mean")}},
                     indent=1))
    for name, scores in result.metrics.get("scoring", {}).items():
        print(f"overall read as {name}: {scores.get('overall')}")
    print(f"wrote {result.out / 'predictions.jsonl'} and metrics.json ({result.evaluated} new samples)")
    return 0


@contextlib.contextmanager
def _removed_if_nothing_written(out: str):
    """If the block fails before a record is written, remove ``out`` when this run created it.

    A failed first run must not leave an empty (or images-only) directory that looks like a
    started evaluation; a directory that existed before (a resumed eval) is left as it was.
    """
    out_dir = Path(out)
    created = not out_dir.exists()
    try:
        yield
    except BaseException:
        if created and out_dir.is_dir() and not (out_dir / "predictions.jsonl").exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _load_config(path: str | None, items: list[str], *, model: str | None = None, preset: str | None = None):
    """``(EvalConfig, notes)``: the defaults, the model's settings, the preset, the YAML file, the overrides.

    Starting from the defaults matters: a partial ``rollout:`` section must keep
    eval's rollout defaults (greedy, one episode per sample), not RolloutConfig's.
    """
    from mapo.eval.config import eval_config

    return eval_config(model, preset, path, items)


def _show_config(args: argparse.Namespace, items: list[str]) -> int:
    """``--show-config``: the effective values with ``--model`` and ``--preset`` layered in."""
    from mapo.cli._config import show
    from mapo.eval import EvalConfig
    from mapo.eval.config import eval_config_data

    data, notes = eval_config_data(args.model, args.preset, args.config, items)
    if notes:
        print(f"# from the model {args.model}: {'; '.join(notes)}")
    layered = argparse.Namespace(**{**vars(args), "config": None, "overrides": [], "set_overrides": []})
    return show(EvalConfig, layered, base=data)


def _load_verifier(name: str, device: str):
    """The verifier ``name`` means: a directory, or a shipped one (``default``, ``shipped:NAME``, ``mapo/assets/NAME``)
    checked against its manifest."""
    from mapo.verifier import default
    from mapo.verifier.clip import load_verifier

    path = default.resolve_verifier_dir(name)
    if path.resolve() == default.DEFAULT_DIR.resolve():
        default.verify(path)
    return load_verifier(path, device=device)


def nothing_evaluated(metrics: dict, out: Path) -> str:
    """One line for an evaluation whose every row was skipped: how many, the commonest reason, where they are listed."""
    reasons = metrics.get("skipped_reasons") or [{"reason": "?", "rows": 0}]
    top = reasons[0]
    return (f"nothing was evaluated: all {metrics['broken_rows']} row(s) were skipped; the commonest reason "
            f"({top['rows']} row(s)): {top['reason']}. Every row and its reason: {Path(out) / 'skipped_rows.jsonl'}")


def _print_skipped(metrics: dict) -> None:
    """The rows that were skipped (file, row, reason) on stderr; all of them are in metrics.json."""
    rows = metrics.get("skipped_rows", [])
    if not rows:
        return
    print(f"mapo eval: skipped {metrics['broken_rows']} row(s) (listed in metrics.json, skipped_rows):", file=sys.stderr)
    for row in rows[:10]:
        print(f"  {row['file']} [row {row['row']}]: {row['reason']}", file=sys.stderr)
    if len(rows) > 10:
        print(f"  ... and {metrics['broken_rows'] - 10} more", file=sys.stderr)
