"""``mapo demo``: the embedded default pipeline on CPU, end to end.

- ``mapo demo [--config configs/demo.yaml] [--out runs/demo] [--fresh] [key=value ...]``
- ``mapo demo --show-config`` prints every knob (``mapo.pipeline.PipelineConfig``)

Stages: held-out data -> tiny CLIP verifier -> warm-start policy -> MAPO RL -> greedy
held-out evaluation of the warm start and of the RL policy -> HTML report ->
``summary.md`` / ``summary.json`` (before-vs-after table). Data, verifier and SFT warm
start are cached under ``cache_dir`` keyed by their config; a second run reuses them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("configs/demo.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML PipelineConfig (default: {DEFAULT_CONFIG} if present)")
    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--fresh", action="store_true", help="start the RL run and evaluations over (cached stages stay)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--show-config", action="store_true", help="print the config knobs and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. rl.steps=10 data.n=16")


def run(args: argparse.Namespace) -> int:
    from mapo.config import describe
    from mapo.pipeline import PipelineConfig, load_pipeline_config, print_summary, run_pipeline

    if args.show_config:
        print("\n".join(describe(PipelineConfig)))
        return 0
    config_path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    command = " ".join(["mapo demo"] + (["--config", config_path] if config_path else []) + ["--out", args.out]
                       + (["--fresh"] if args.fresh else []) + list(args.overrides))
    try:
        cfg = load_pipeline_config(config_path, args.overrides)
        summary = run_pipeline(cfg, args.out, fresh=args.fresh, progress=not args.no_progress,
                               report=not args.no_report, command=command)
    except (ValueError, FileNotFoundError) as e:
        print(f"mapo demo: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0
