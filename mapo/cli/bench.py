"""``mapo bench``: performance measurements.

- ``mapo bench rollout [--batch-size 32] [--samples 8] [--group-size 4] [--policy DIR] [--out FILE.json]``
  plays the same episodes with the batched engine and one episode at a time,
  and prints generated tokens/s, the speedup and peak memory of each.
"""

from __future__ import annotations

import argparse
import json
import sys

from mapo.data.synth import LEVELS
from mapo.data.task import tool_config_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    help_ = "batched vs one-at-a-time rollout: tokens/s and peak memory"
    r = sub.add_parser("rollout", help=help_, description=help_)
    r.add_argument("--policy", default=None, help="local checkpoint directory (default: build the tiny random policy)")
    r.add_argument("--preset", default="tiny", help="tiny-policy preset when --policy is not given (default tiny)")
    r.add_argument("--level", default="easy", choices=tuple(LEVELS), metavar="LEVEL",
                   help=f"synthetic task level: {', '.join(LEVELS)} (default easy)")
    r.add_argument("--samples", type=int, default=8, help="number of synthetic samples (default 8)")
    r.add_argument("--group-size", type=int, default=4, help="episodes per sample (default 4)")
    r.add_argument("--batch-size", type=int, default=32, help="episodes per forward in the batched run (default 32)")
    r.add_argument("--max-new-tokens", type=int, default=64, help="tokens per assistant turn (default 64)")
    r.add_argument("--max-turns", type=int, default=2, help="assistant turns per episode (default 2)")
    r.add_argument("--zoom-turns", type=int, default=1, help="scripted zoom turns at the start of each episode (default 1)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    r.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    r.add_argument("--seed", type=int, default=0, help="sampling and data seed (default 0)")
    r.add_argument("--out", default=None, help="also write the results as JSON to this file")


def run(args: argparse.Namespace) -> int:
    try:
        return _rollout(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mapo bench {args.action}: {e}", file=sys.stderr)
        return 2


def _rollout(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from mapo.pipelines.bench import bench_rollout
    from mapo.data import synth
    from mapo.policy import build_tiny_policy, load_policy
    from mapo.engine.rollout import RolloutConfig

    for name in ("samples", "group_size", "batch_size", "max_new_tokens", "max_turns"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    from mapo.cli.device_check import check_device, check_threads

    check_device(args.device)
    if args.threads is not None and check_threads(args.threads):
        torch.set_num_threads(args.threads)
    level = synth.level_config(args.level)
    tool = tool_config_for(level)
    samples = synth.generate(args.samples, seed=args.seed, config=level)
    if args.policy:
        policy = load_policy(args.policy, device=args.device)
    else:
        policy = build_tiny_policy(args.preset, tool_config=tool, seed=args.seed)
        policy.model.to(args.device)
    config = RolloutConfig(
        group_size=args.group_size,
        max_turns=args.max_turns,
        max_new_tokens_per_turn=args.max_new_tokens,
        seed=args.seed,
        tool=tool,
    )
    result = bench_rollout(policy, samples, config, batch_size=args.batch_size, zoom_turns=args.zoom_turns)
    print(
        f"rollout benchmark: {args.samples} samples x {args.group_size} episodes, "
        f"{args.max_turns} turns x {args.max_new_tokens} tokens max, {args.zoom_turns} scripted zoom turn(s), "
        f"torch threads {torch.get_num_threads()}, device {args.device}"
    )
    print(
        f"{'mode':<11} {'batch':>5} {'tokens':>7} {'wall s':>7} {'tokens/s':>9} {'CPU s':>7} {'tok/CPU s':>9} "
        f"{'peak MB':>8} {'rise MB':>8}  finish reasons"
    )
    for key in ("batched", "sequential"):
        r = result[key]
        print(
            f"{r.mode:<11} {r.batch_size:>5} {r.generated_tokens:>7} {r.seconds:>7.2f} {r.tokens_per_s:>9.1f} "
            f"{r.cpu_seconds:>7.2f} {r.tokens_per_cpu_s:>9.1f} {r.peak_memory_mb:>8.0f} {r.memory_rise_mb:>8.0f}  {r.finish_reasons}"
        )
    print(
        f"speedup, batched / sequential: {result['speedup']:.1f}x in tokens per wall second, "
        f"{result['cpu_speedup']:.1f}x in tokens per CPU second"
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": vars(args),
            "threads": torch.get_num_threads(),
            "speedup": result["speedup"],
            "cpu_speedup": result["cpu_speedup"],
            "batched": dataclasses.asdict(result["batched"]),
            "sequential": dataclasses.asdict(result["sequential"]),
        }
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0
