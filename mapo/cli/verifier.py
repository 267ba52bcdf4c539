"""``mapo verifier``: train the tiny CLIP, inspect what its scores mean, score pairs, time it.

- ``mapo verifier train --out DIR [--data DIR | --synth-level L --n N]``
- ``mapo verifier inspect --model DIR`` — score distribution of correct, partially
  correct and wrong descriptions on fresh synthetic crops, quality metrics, throughput.
- ``mapo verifier score --model DIR --image A.png --text "..." [--image B.png --text "..."]``
- ``mapo verifier bench --model DIR`` — pairs per second at ``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.cli._config import add_config_arguments
    from mapo.data.synth import LEVELS

    levels = ", ".join(LEVELS)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = _leaf(sub, "train", "train a tiny CLIP on synthetic crops and save an HF CLIP directory")
    train.add_argument("--out", default=None, help="output model directory; required unless --show-config")
    train.add_argument("--data", default=None, help="samples with boxes (any format `mapo data` reads); default: generate")
    train.add_argument("--synth-level", default=None, choices=tuple(LEVELS), metavar="LEVEL",
                       help=f"synthetic level to generate: {levels}; shorthand for synth_level=LEVEL")
    train.add_argument("--n", type=int, default=None, help="number of samples to generate or read; shorthand for n_samples=N")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps; shorthand for steps=N")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--no-progress", action="store_true",
                       help="plain log lines instead of a progress bar (the default when output is not a terminal)")
    add_config_arguments(train, example="steps=600 lr=1e-3 (configs/verifier_tiny.yaml is a config)")

    inspect = _leaf(sub, "inspect", "score distributions, quality and throughput of a verifier")
    _model_args(inspect)
    inspect.add_argument("--synth-level", default="medium", choices=tuple(LEVELS), metavar="LEVEL",
                         help=f"synthetic level of the probe crops: {levels} (default medium)")
    inspect.add_argument("--n", type=int, default=60, help="synthetic samples to cut probe crops from (default 60)")
    inspect.add_argument("--seed", type=int, default=12345, help="seed of the probe samples (default 12345)")
    inspect.add_argument("--json", default=None, help="also write the numbers to this JSON file")

    score = _leaf(sub, "score", "score description/image pairs")
    _model_args(score)
    score.add_argument("--image", action="append", required=True, help="image file (repeat, paired with --text)")
    score.add_argument("--text", action="append", required=True, help="description (repeat, paired with --image)")

    bench = _leaf(sub, "bench", "scoring throughput in pairs/s")
    _model_args(bench)
    bench.add_argument("--pairs", type=int, default=512, help="pairs to score (default 512)")


def _leaf(sub, name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local CLIP/SigLIP directory (e.g. the output of `verifier train`)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="model precision")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per forward (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")


def run(args: argparse.Namespace) -> int:
    try:
        return {"train": _train, "inspect": _inspect, "score": _score, "bench": _bench}[args.action](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"mapo verifier {args.action}: error: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from mapo.cli import _config
    from mapo.verifier.train import VerifierTrainConfig, train_tiny_clip

    extra = [f"{key}={value}" for key, value in (
        ("data", args.data), ("synth_level", args.synth_level), ("n_samples", args.n), ("steps", args.steps),
    ) if value is not None]
    if args.show_config:
        return _config.show(VerifierTrainConfig, args, extra=extra)
    config = _config.load(VerifierTrainConfig, args, extra=extra)
    if args.out is None:
        raise ValueError("--out is required")
    mode = "off" if args.quiet else "lines" if args.no_progress else "auto"
    metrics = train_tiny_clip(config, args.out, progress=mode)
    print(json.dumps(metrics, indent=2))
    print(f"saved to {args.out}; metrics in {args.out}/metrics.json")
    return 0


def _load(args: argparse.Namespace):
    import torch

    from mapo.cli.device_check import check_device, check_threads
    from mapo.verifier import load_verifier

    check_device(args.device)
    if args.threads is not None and check_threads(args.threads):
        torch.set_num_threads(args.threads)
    return load_verifier(args.model, device=args.device, dtype=args.dtype)


def _inspect(args: argparse.Namespace) -> int:
    from mapo.data import synth
    from mapo.data.task import tool_config_for
    from mapo.verifier.inspect import calibration_groups, evaluate, format_distribution, throughput
    from mapo.verifier.pairs import synth_pairs

    verifier = _load(args)
    level = synth.level_config(args.synth_level)
    samples = synth.generate(args.n, args.seed, level)
    pairs = synth_pairs(samples, 8, tool_config_for(level), args.seed)
    groups = calibration_groups(verifier, pairs, seed=args.seed, batch_size=args.batch_size)
    print(f"scores of {len(pairs)} probe crops ({args.n} '{args.synth_level}' samples, seed {args.seed}):")
    print(format_distribution(groups))
    quality = evaluate(verifier, pairs, candidates=16, seed=args.seed, batch_size=args.batch_size)
    print("\nquality:", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()}))
    speed = throughput(verifier, pairs, batch_size=args.batch_size)
    print(f"throughput: {speed:.0f} pairs/s at batch {args.batch_size} (image cache off)")
    if args.json:
        summary = {k: {"n": len(v), "mean": float(v.mean()) if len(v) else None} for k, v in groups.items()}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"groups": summary, "quality": quality, "pairs_per_s": speed}, fh, indent=2)
    return 0


def _score(args: argparse.Namespace) -> int:
    from mapo.data import open_image

    if len(args.image) != len(args.text):
        raise ValueError(f"--image and --text pair up: got {len(args.image)} images and {len(args.text)} texts")
    images = [open_image(path) for path in args.image]
    result = _load(args).score_detailed(args.text, images, batch_size=args.batch_size)
    for path, text, s, trunc, miss in zip(args.image, args.text, result.scores, result.truncated, result.missing):
        flag = " (empty: s_missing)" if miss else " (truncated)" if trunc else ""
        print(f"{float(s):+.4f}  {path}  {text!r}{flag}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mapo.data import synth
    from mapo.data.task import tool_config_for
    from mapo.verifier.inspect import throughput
    from mapo.verifier.pairs import synth_pairs

    level = synth.level_config("medium")
    n_samples = max(1, -(-args.pairs // 8))
    pairs = synth_pairs(synth.generate(n_samples, 777, level), 8, tool_config_for(level), 777)[: args.pairs]
    verifier = _load(args)
    speed = throughput(verifier, pairs, batch_size=args.batch_size)
    print(f"{speed:.0f} pairs/s ({len(pairs)} pairs, batch {args.batch_size}, device {args.device}, "
          f"dtype {args.dtype}, image cache off)")
    return 0
