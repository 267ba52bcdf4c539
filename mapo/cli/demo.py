"""``mapo demo``: the embedded default pipeline on CPU, end to end.

- ``mapo demo [--config configs/demo.yaml] [--out runs/demo] [--fresh] [key=value ...]``
- ``mapo demo [key=value ...] --show-config`` prints the effective config (``mapo.pipelines.demo_config.PipelineConfig``,
  its ``rl`` section resolved knob by knob)

Without ``--config`` the demo reads ``configs/demo.yaml`` from the current folder or,
from another folder, from the source checkout mapo runs from; it refuses to run
when neither has it rather than build a different task from the built-in defaults.

Stages: held-out data -> tiny CLIP verifier -> warm-start policy -> MAPO RL -> greedy
held-out evaluation of the warm start and of the RL policy -> HTML report ->
``summary.md`` / ``summary.json`` (before-vs-after table). The verifier and the warm start
are the shipped checkpoints where the config asks for them (``verifier_source``,
``warmstart.source``); data, a trained verifier and an SFT warm start are cached under
``cache_dir`` keyed by their config; a second run reuses them.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "demo.yaml"  # in configs/ of this folder or of the source checkout (never silently skipped)
PIPELINE_FILLED = ("rl.policy", "rl.verifier", "rl.data.eval_source")  # set by the pipeline from its stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.cli._config import add_config_arguments

    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--fresh", action="store_true", help="start the RL run and evaluations over (cached stages stay)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain log lines instead of a progress bar (the default when output is not a terminal)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    add_config_arguments(parser, example="rl.steps=10 data.n=16", default_config=f"configs/{DEFAULT_CONFIG}")


def _resolved_rl(cfg) -> dict:
    """The RL stage's knobs, resolved (the stage paths are placeholders: PIPELINE_FILLED skips them)."""
    from mapo.pipelines.demo_config import rl_config

    return {"rl": rl_config(cfg, policy="default", verifier="stage", heldout="stage")}


def run(args: argparse.Namespace) -> int:
    from mapo.cli import _config
    from mapo.pipelines.demo import run_pipeline
    from mapo.pipelines.demo_config import PipelineConfig
    from mapo.pipelines.demo_summary import print_summary

    try:
        config_path = args.config or _config.default_config(DEFAULT_CONFIG, "mapo demo")
        if args.show_config:
            return _config.show(PipelineConfig, args, config_path=config_path, expand=_resolved_rl, skip=PIPELINE_FILLED)
        cfg = _config.load(PipelineConfig, args, config_path=config_path)
        command = " ".join(["mapo demo", "--config", config_path, "--out", args.out]
                           + (["--fresh"] if args.fresh else []) + _config.overrides(args))
        summary = run_pipeline(cfg, args.out, fresh=args.fresh, progress="lines" if args.no_progress else "auto",
                               report=not args.no_report, command=command)
    except (ValueError, FileNotFoundError) as e:
        print(f"mapo demo: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0
