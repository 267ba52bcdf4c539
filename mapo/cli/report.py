"""``mapo report RUN_OR_EVAL_DIR --out DIR``: a static HTML trajectory report."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="an eval directory (predictions.jsonl) or a training run directory (metrics.jsonl)")
    parser.add_argument("--out", default="report", help="output directory for index.html and assets/ (default: report)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it holds an earlier report")
    parser.add_argument(
        "--max-trajectories", type=int, default=1000,
        help="show at most this many trajectory cards (statistics use all records; 0 = none; default 1000)",
    )
    parser.add_argument("--all", action="store_true", help="show every trajectory (overrides --max-trajectories)")
    parser.add_argument("--low-score", type=float, default=0.2, help="semantic scores below this are highlighted")


def run(args: argparse.Namespace) -> int:
    from mapo.report import build_report

    try:
        index = build_report(
            args.source,
            args.out,
            force=args.force,
            max_trajectories=None if args.all else args.max_trajectories,
            low_score=args.low_score,
        )
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"mapo report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index}  (open file://{index.resolve()})")
    return 0
