"""``mapo experiment``: experiments whose output is a generated document.

- ``mapo experiment compare [--config configs/compare.yaml] [--seeds 3] [--steps N] [--out runs/compare]
  [--doc OUT/RESULTS.md] [--img-dir OUT/img] [--report-only] [key=value ...]``: GRPO vs MAPO from the
  same warm start with the same budget, over seeds; writes the results document and a PNG of the curves
  (:mod:`mapo.pipelines.compare`) next to the runs. The project's ``docs/RESULTS.md`` is written with
  ``--doc docs/RESULTS.md --img-dir docs/img``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_CONFIG = "compare.yaml"  # in configs/ of this folder or of the source checkout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.cli._config import add_config_arguments

    sub = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    help_ = "GRPO vs MAPO over seeds -> OUT/RESULTS.md + OUT/img/compare_curves.png"
    p = sub.add_parser("compare", help=help_, description=help_ + " (--doc and --img-dir write elsewhere, e.g. docs/)")
    p.add_argument("--seeds", type=int, default=None, help="runs per algorithm (seeds 0..N-1); shorthand for seeds=N")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run; shorthand for steps=N")
    p.add_argument("--out", default="runs/compare", help="directory of the runs (default runs/compare)")
    p.add_argument("--doc", default=None, help="results document to write (default OUT/RESULTS.md)")
    p.add_argument("--img-dir", default=None, help="where the curves PNG goes (default OUT/img)")
    p.add_argument("--report-only", action="store_true", help="write the document from the finished runs in --out")
    p.add_argument("--no-progress", action="store_true",
                   help="plain log lines instead of progress bars (the default when output is not a terminal)")
    add_config_arguments(p, example="pipeline.rl.optim.lr=3e-4", default_config=f"configs/{DEFAULT_CONFIG}")


# Set per run from the stages and the (algorithm, seed) pair: left out of --show-config's pipeline.rl.
RUN_FILLED = ("policy", "verifier", "data.eval_source", "seed", "steps", "advantage.estimator")


def _resolved_rl(cfg) -> dict:
    from mapo.pipelines.demo_config import rl_config

    return {"pipeline.rl": rl_config(cfg.pipeline, policy="default", verifier="stage", heldout="stage")}


def run(args: argparse.Namespace) -> int:
    from mapo.cli import _config
    from mapo.pipelines.compare import CompareConfig, existing_runs, run_compare, write_results

    extra = [f"seeds={args.seeds}"] if args.seeds is not None else []
    extra += [f"steps={args.steps}"] if args.steps is not None else []
    command = "mapo experiment " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["experiment"] else _argv(args))
    doc = Path(args.doc) if args.doc else Path(args.out) / "RESULTS.md"
    img_dir = Path(args.img_dir) if args.img_dir else Path(args.out) / "img"
    try:
        config_path = args.config or _config.default_config(DEFAULT_CONFIG, "mapo experiment compare")
        if args.show_config:
            return _config.show(CompareConfig, args, config_path=config_path, extra=extra, expand=_resolved_rl,
                                skip=[f"pipeline.rl.{k}" for k in RUN_FILLED])
        cfg = _config.load(CompareConfig, args, config_path=config_path, extra=extra)
        if args.report_only:
            dirs = existing_runs(args.out, cfg)
            if not dirs:
                untested = existing_runs(args.out, _config.load(CompareConfig, args, config_path=config_path,
                                                                extra=extra + ["pipeline.test.n=0"]))
                hint = (f" ({len(untested)} runs lack their test-set evaluation eval_test/: run the compare again to "
                        "evaluate them, or add pipeline.test.n=0 to report on the validation set alone)") if untested else ""
                raise ValueError(f"no finished, evaluated runs of this config under {args.out}{hint}")
        else:
            dirs = run_compare(cfg, args.out, progress="lines" if args.no_progress else "auto")
        written = write_results(dirs, doc, img_dir, command)
    except (ValueError, FileNotFoundError) as e:
        print(f"mapo experiment compare: {e}", file=sys.stderr)
        return 2
    print(f"wrote {written} from {len(dirs)} runs under {args.out}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line, rebuilt from parsed arguments (when not called through ``mapo``)."""
    out = ["compare"]
    for flag in ("config", "seeds", "steps", "out", "doc", "img_dir"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out + (["--report-only"] if args.report_only else []) + list(args.overrides)
