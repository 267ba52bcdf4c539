"""The ``mapo`` command line.

Sub-commands live in :mod:`mapo.cli`, one module each, imported lazily so that
``mapo --help`` does not import torch or transformers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module under mapo.cli, one-line help). Keep sorted by workflow order.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the embedded default pipeline end to end on CPU"),
    "data": ("data", "generate the synthetic task, show samples, check a dataset"),
    "verifier": ("verifier", "train the tiny CLIP verifier, inspect score distributions, score pairs"),
    "sft": ("sft", "supervised warm start of the policy on oracle transcripts"),
    "train": ("train", "reinforcement learning with GRPO or MAPO (rollout, verifier, advantage, update)"),
    "eval": ("eval", "evaluate a policy greedily on a benchmark; predictions.jsonl + metrics.json"),
    "report": ("report", "render a static HTML report of an eval or training run"),
    "bench": ("bench", "benchmarks: `mapo bench rollout` (batched vs sequential tokens/s, memory)"),
    "experiment": ("experiment", "experiments: `mapo experiment compare` (GRPO vs MAPO over seeds -> docs/RESULTS.md)"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="mapo",
        description="mapo: train VLMs that think with images with MAPO.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun `mapo COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="mapo [-h] [--version] COMMAND ...",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        from mapo import __version__

        print(f"mapo {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"mapo: unknown command {name!r}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # transformers' "Loading checkpoint shards" / "Writing model shards" bars would break up mapo's own
    # progress (and smear log files); read by huggingface_hub when transformers is first imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module(f"mapo.cli.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"mapo {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from mapo.core.errors import MapoError

    try:
        return int(module.run(args) or 0)
    except MapoError as e:  # bad input that a command did not report itself: still one line, never a traceback
        print(f"mapo {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mapo ... | head` closed the pipe: stop quietly, as Unix tools do (and keep
        # Python's exit-time flush of stdout from raising again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
