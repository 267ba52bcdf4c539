"""``mapo demo``: the embedded default pipeline on CPU."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")


def run(args: argparse.Namespace) -> int:
    from mapo.cli import COMMANDS

    print("mapo demo: the pipeline stages available so far:")
    for name, (_, help_) in COMMANDS.items():
        print(f"  mapo {name:<10} {help_}")
    return 0
