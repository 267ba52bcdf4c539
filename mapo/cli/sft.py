"""``mapo sft``: supervised warm start on oracle transcripts of the synthetic task.

- ``mapo sft --config configs/sft_tiny.yaml --out runs/sft [key=value ...]``
- ``mapo sft --resume runs/sft [log_every=10 ...]`` continues from the newest checkpoint
- ``mapo sft --data runs/eval/predictions.jsonl policy.init_from=MODEL ...`` trains on your own conversations
  (an eval's trajectories, or an SFT parquet: :mod:`mapo.train.sft_own`)
- ``mapo sft --config FILE [key=value ...] --show-config`` prints the effective config with each knob's help
- ``mapo sft --summary RUN_DIR`` prints the loss curve and the held-out metrics of a run
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.cli._config import add_config_arguments

    parser.add_argument("--out", default="runs/sft", help="run directory, must be new or empty (default runs/sft)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="resume the run in RUN_DIR (reads its config.yaml)")
    parser.add_argument("--summary", default=None, metavar="RUN_DIR", help="print a run's loss curve and eval, and exit")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="train on your own conversations: an eval's predictions.jsonl (or its directory) or an SFT "
                             "parquet (shorthand for data.source=PATH)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain log lines instead of a progress bar (the default when output is not a terminal)")
    add_config_arguments(parser, example="steps=50 optim.lr=3e-4")


def run(args: argparse.Namespace) -> int:
    from mapo.cli import _config
    from mapo.train.sft import SFTConfig, config_from_run_dir, run_sft

    if args.summary:
        return _summary(args.summary)
    try:
        if args.resume and args.config:
            raise ValueError("give either --resume RUN_DIR (its config.yaml is used) or --config, not both")
        base = config_from_run_dir(args.resume) if args.resume else None
        extra = [f"data.source={args.data}"] if args.data is not None else []
        if args.show_config:
            return _config.show(SFTConfig, args, base=base, extra=extra)
        cfg = _config.load(SFTConfig, args, base=base, extra=extra)
        run_dir = args.resume or args.out
        final = run_sft(cfg, run_dir, resume=bool(args.resume), progress="lines" if args.no_progress else None)
    except (ValueError, OSError) as e:  # OSError: an --out that cannot be written (read-only, full disk)
        print(f"mapo sft: {e}", file=sys.stderr)
        return 2
    print(json.dumps(final, indent=2))
    print(f"final policy: {run_dir}/final  (metrics: {run_dir}/metrics.jsonl, eval: {run_dir}/eval.json)")
    return 0


def _summary(run_dir: str) -> int:
    """Train loss / token accuracy at ~10 points, the teacher-forced evals, and eval.json."""
    from pathlib import Path

    from mapo.train.metrics_log import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        print(f"mapo sft: {run_dir} has no metrics.jsonl", file=sys.stderr)
        return 2
    records = read_metrics(path)
    train = [r for r in records if "train/loss" in r]
    stride = max(1, len(train) // 10)
    print("step  train/loss  token_acc  coord_token_acc  step_s")
    for r in train[::stride] + ([train[-1]] if train and (len(train) - 1) % stride else []):
        print(
            f"{r['step']:>4}  {r['train/loss']:>10.4f}  {r['train/token_acc']:>9.3f}  "
            f"{r.get('train/coord_token_acc', float('nan')):>15.3f}  {r['time/step_s']:>6.2f}"
        )
    for r in records:
        if "eval/loss" in r:
            rest = "  ".join(f"{k}={v:.4g}" for k, v in r.items() if k != "step")
            print(f"step {r['step']}: {rest}")
    total = sum(r["time/step_s"] for r in train)
    print(f"logged steps: {len(train)}; mean step time {total / max(len(train), 1):.2f} s")
    return 0
