"""``mapo train``: reinforcement learning of the policy with GRPO or MAPO.

- ``mapo train --config configs/train_tiny.yaml --out runs/rl [--algo mapo|grpo|mapo_gated|reward_mix] [key=value ...]``
- ``mapo train --resume runs/rl [log_every=5 ...]`` continues from the newest checkpoint
- ``mapo train --show-config`` prints every knob with its default and help
- ``torchrun --nproc-per-node N -m mapo train ...`` trains data-parallel (docs/scale_out.md)

``--algo X`` is shorthand for the override ``advantage.estimator=X``.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("--out", default="runs/rl", help="run directory, must be new or empty (default runs/rl)")
    parser.add_argument("--algo", default=None, help="advantage estimator: mapo, grpo, mapo_gated, reward_mix")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="resume the run in RUN_DIR (reads its config.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--show-config", action="store_true", help="print the config knobs and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=50 optim.lr=1e-5")


def run(args: argparse.Namespace) -> int:
    from mapo.config import apply_overrides, describe, from_dict, load_config
    from mapo.train.rl import RLConfig, config_from_run_dir, train

    if args.show_config:
        print("\n".join(describe(RLConfig)))
        return 0
    overrides = list(args.overrides)
    if args.algo is not None:
        overrides.append(f"advantage.estimator={args.algo}")
    try:
        if args.resume:
            if args.config:
                raise ValueError("give either --resume RUN_DIR (its config.yaml is used) or --config, not both")
            cfg = from_dict(RLConfig, apply_overrides(config_from_run_dir(args.resume), overrides))
            run_dir = args.resume
        else:
            cfg = load_config(RLConfig, args.config, overrides)
            run_dir = args.out
        summary = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    except (ValueError, OSError) as e:  # OSError: an --out that cannot be written (read-only, full disk)
        print(f"mapo train: {e}", file=sys.stderr)
        return 2
    from mapo.train.distributed import dist_info_from_env

    if not dist_info_from_env().is_main:  # under torchrun, rank 0 reports for the job
        return 0
    print(json.dumps(summary["eval"], indent=2))
    print(f"final policy: {run_dir}/final  (metrics: {run_dir}/metrics.jsonl, summary: {run_dir}/summary.json)")
    return 0
