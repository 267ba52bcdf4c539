"""``mapo experiment``: experiments whose output is a generated document.

- ``mapo experiment compare [--config configs/compare.yaml] [--seeds 3] [--steps N] [--out runs/compare]
  [--doc docs/RESULTS.md] [--img-dir docs/img] [--report-only] [key=value ...]``: GRPO vs MAPO from the
  same warm start with the same budget, over seeds; writes the results document and a PNG of the curves
  (:mod:`mapo.experiments.compare`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("configs/compare.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    p = sub.add_parser("compare", help="GRPO vs MAPO over seeds -> docs/RESULTS.md + docs/img/compare_curves.png")
    p.add_argument("--config", default=None, help=f"YAML CompareConfig (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--seeds", type=int, default=None, help="runs per algorithm (seeds 0..N-1); overrides the config")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run; overrides the config")
    p.add_argument("--out", default="runs/compare", help="directory of the runs (default runs/compare)")
    p.add_argument("--doc", default="docs/RESULTS.md", help="results document to write (default docs/RESULTS.md)")
    p.add_argument("--img-dir", default="docs/img", help="where the curves PNG goes (default docs/img)")
    p.add_argument("--report-only", action="store_true", help="write the document from the finished runs in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--show-config", action="store_true", help="print the config knobs and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. pipeline.rl.optim.lr=3e-4")


def run(args: argparse.Namespace) -> int:
    from mapo.config import describe, load_config
    from mapo.experiments.compare import CompareConfig, existing_runs, run_compare, write_results

    if args.show_config:
        print("\n".join(describe(CompareConfig)))
        return 0
    config_path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    overrides = list(args.overrides)
    overrides += [f"seeds={args.seeds}"] if args.seeds is not None else []
    overrides += [f"steps={args.steps}"] if args.steps is not None else []
    command = "mapo experiment " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["experiment"] else _argv(args))
    try:
        cfg = load_config(CompareConfig, config_path, overrides)
        if args.report_only:
            dirs = existing_runs(args.out, cfg)
            if not dirs:
                raise ValueError(f"no finished, evaluated runs of this config under {args.out}")
        else:
            dirs = run_compare(cfg, args.out, progress=not args.no_progress)
        doc = write_results(dirs, args.doc, args.img_dir, command)
    except (ValueError, FileNotFoundError) as e:
        print(f"mapo experiment compare: {e}", file=sys.stderr)
        return 2
    print(f"wrote {doc} from {len(dirs)} runs under {args.out}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line, rebuilt from parsed arguments (when not called through ``mapo``)."""
    out = ["compare"]
    for flag in ("config", "seeds", "steps", "out", "doc", "img_dir"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out + (["--report-only"] if args.report_only else []) + list(args.overrides)
