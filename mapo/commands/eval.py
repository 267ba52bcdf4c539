"""``mapo eval --data SOURCE --model DIR [--verifier DIR] --out DIR``: greedy agent evaluation."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="V* folder, HR-Bench .tsv, MME-RealWorld .json, DeepEyes .parquet, "
                        "`mapo data synth` output, or synth:N[:LEVEL[:SEED]]")
    parser.add_argument("--model", help="local policy directory (Qwen2.5-VL checkpoint, or RUN_DIR/final of mapo sft)")
    parser.add_argument("--verifier", default=None, help="local CLIP/SigLIP directory for semantic scores (optional)")
    parser.add_argument("--out", help="eval directory; an existing one of the same model, data and config is resumed "
                        "(finished samples are skipped); one holding another evaluation is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --out that holds an evaluation of another model, data or config")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--batch-size", type=int, default=None, help="episodes generated together (rollout.batch_size)")
    parser.add_argument("--preset", choices=("mapo", "deepeyes"), default=None,
                        help="protocol preset: mapo (default) or DeepEyes' prompts and pixel budgets")
    parser.add_argument("--config", default=None, help="YAML file of EvalConfig keys")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. rollout.max_turns=6 rollout.tool.view_max_pixels=1003520")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--show-config", action="store_true", help="print every config key with its help and exit")


def run(args: argparse.Namespace) -> int:
    from mapo.config import describe
    from mapo.eval import EvalConfig, ProgressLine, evaluate

    if args.show_config:
        print("\n".join(describe(EvalConfig)))
        return 0
    missing = [f"--{n}" for n in ("data", "model", "out") if getattr(args, n) is None]
    if missing:
        print(f"mapo eval: {', '.join(missing)} required", file=sys.stderr)
        return 2
    overrides = list(args.set)
    if args.batch_size is not None:
        overrides.append(f"rollout.batch_size={args.batch_size}")
    if args.preset is not None:
        overrides.append(f"preset={args.preset}")
    try:
        config = _load_config(args.config, overrides)
        import torch

        from mapo.policy import load_policy

        if args.threads:
            torch.set_num_threads(args.threads)
        policy = load_policy(args.model, dtype=args.dtype, device=args.device)
        verifier = None
        if args.verifier:
            from mapo.verifier.clip import load_verifier

            verifier = load_verifier(args.verifier, device=args.device)
        result = evaluate(
            args.data, args.out, policy=policy, verifier=verifier, config=config, limit=args.limit,
            progress=None if args.no_progress else ProgressLine(),
            run_info={"model": str(args.model), "verifier": args.verifier}, overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:  # OSError: an --out that cannot be written (read-only, full disk)
        print(f"mapo eval: {e}", file=sys.stderr)
        return 2
    _print_skipped(result.metrics)
    official, stats = result.metrics["official"], result.metrics["tools"]
    print(json.dumps({"overall": official.get("overall"), "n": official.get("n"),
                      "broken_rows": result.metrics["broken_rows"], **{k: stats[k] for k in (
                          "tool_calls_per_sample", "invalid_call_rate", "crop_hit_rate", "semantic_score_mean")}},
                     indent=1))
    print(f"wrote {result.out / 'predictions.jsonl'} and metrics.json ({result.evaluated} new samples)")
    return 0


def _load_config(path: str | None, overrides: list[str]):
    """EvalConfig from its defaults, then the YAML file, then overrides.

    Starting from the defaults matters: a partial ``rollout:`` section must keep
    eval's rollout defaults (greedy, one episode per sample), not RolloutConfig's.
    """
    from pathlib import Path

    import yaml

    from mapo.config import apply_overrides, from_dict, to_dict
    from mapo.eval import EvalConfig

    data = to_dict(EvalConfig())
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        data = _merge(data, loaded)
    return from_dict(EvalConfig, apply_overrides(data, overrides))


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
