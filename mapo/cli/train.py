"""``mapo train``: reinforcement learning of the policy with GRPO or MAPO.

- ``mapo train --config configs/train_tiny.yaml --out runs/rl [--algo ESTIMATOR] [key=value ...]``
- ``mapo train --resume runs/rl [steps=400 log_every=5 ...]`` continues from the newest checkpoint (``steps`` may
  be raised); Ctrl-C during a run writes a checkpoint after the current step and prints this command
- ``mapo train --config FILE [key=value ...] --show-config`` prints the effective config with each knob's help
- ``torchrun --nproc-per-node N -m mapo train ...`` trains data-parallel (docs/scale_out.md)

``--algo X`` is shorthand for the override ``advantage.estimator=X``.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.algo.advantage import list_estimators
    from mapo.cli._config import add_config_arguments

    parser.add_argument("--out", default="runs/rl", help="run directory, must be new or empty (default runs/rl)")
    parser.add_argument("--algo", default=None, help=f"advantage estimator: {', '.join(list_estimators())}")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="resume the run in RUN_DIR (reads its config.yaml)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain log lines instead of a progress bar (the default when output is not a terminal)")
    add_config_arguments(parser, example="steps=50 optim.lr=1e-5")


def run(args: argparse.Namespace) -> int:
    from mapo.cli import _config
    from mapo.train.interrupt import TrainingInterrupted
    from mapo.train.rl import RLConfig, config_from_run_dir, train

    extra = [f"advantage.estimator={args.algo}"] if args.algo is not None else []
    try:
        if args.resume and args.config:
            raise ValueError("give either --resume RUN_DIR (its config.yaml is used) or --config, not both")
        base = config_from_run_dir(args.resume) if args.resume else None
        if args.show_config:
            return _config.show(RLConfig, args, base=base, extra=extra)
        cfg = _config.load(RLConfig, args, base=base, extra=extra)
        run_dir = args.resume or args.out
        summary = train(cfg, run_dir, resume=bool(args.resume), progress="lines" if args.no_progress else "auto")
    except TrainingInterrupted as e:  # Ctrl-C: a checkpoint was written; the message is the resume command
        print(f"mapo train: {e}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # OSError: an --out that cannot be written (read-only, full disk)
        print(f"mapo train: {e}", file=sys.stderr)
        return 2
    from mapo.train.distributed import dist_info_from_env

    if not dist_info_from_env().is_main:  # under torchrun, rank 0 reports for the job
        return 0
    print(json.dumps(summary["eval"], indent=2))
    print(f"final policy: {run_dir}/final  (metrics: {run_dir}/metrics.jsonl, summary: {run_dir}/summary.json)")
    return 0
