"""``mapo data``: generate the synthetic task, look at samples, check a dataset.

- ``mapo data synth --out DIR --n N --seed S --level LEVEL --format vstar|hrbench|mme|deepeyes|all
  [--config FILE] [key=value ...] [--show-config]`` (levels: ``mapo.data.synth.LEVELS``)
- ``mapo data show SOURCE --n 8 --out grid.png``
- ``mapo data check SOURCE [--strict]``
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mapo.data.synth import LEVELS



def _leaf(sub, name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mapo.data.benchmarks import FORMATS

    from mapo.cli._config import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    synth = _leaf(sub, "synth", "generate the synthetic visual-search task in benchmark formats")
    synth.add_argument("--out", default=None, help="output folder (one sub-folder per format); required unless --show-config")
    synth.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; sample i depends only on (seed, i)")
    synth.add_argument("--level", default="easy", choices=tuple(LEVELS), metavar="LEVEL",
                       help=f"curriculum preset, the base the config and overrides apply to: {', '.join(LEVELS)} (default easy)")
    synth.add_argument("--format", default="all", choices=(*FORMATS, "all"), help="format(s) to write (default all)")
    synth.add_argument("--workers", type=int, default=2, help="processes for rendering (default 2)")
    add_config_arguments(synth, example="grid_lines=0.5 n_distractors=3")

    show = _leaf(sub, "show", "render samples with their target boxes into one picture")
    show.add_argument("source", help="a dataset: V* folder, HR-Bench .tsv, MME .json, DeepEyes .parquet")
    show.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    show.add_argument("--out", default="grid.png", help="output picture (default grid.png)")
    show.add_argument("--cols", type=int, default=4, help="thumbnails per row (default 4)")
    show.add_argument("--thumb", type=int, default=256, help="thumbnail side in pixels (default 256)")

    check = _leaf(sub, "check", "load a dataset, decoding every image, and print what was loaded and skipped, and why")
    check.add_argument("source", help="a dataset: V* folder, HR-Bench .tsv, MME .json, DeepEyes .parquet")
    check.add_argument("--strict", action="store_true", help="fail on the first bad record")
    check.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    check.add_argument("--image-root", default=None, help="MME-RealWorld image folder (default: the JSON's folder)")


def run(args: argparse.Namespace) -> int:
    try:
        return {"synth": _synth, "show": _show, "check": _check}[args.action](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mapo data {args.action}: {e}", file=sys.stderr)
        return 2


def _synth(args: argparse.Namespace) -> int:
    from mapo.cli import _config
    from mapo.core.config import save_config, to_dict
    from mapo.data.synth import SynthConfig, level_config, resolution_check
    from mapo.data.benchmarks import FORMATS, write_samples

    # Level preset first, then --config, then overrides, typed and checked like any config.
    base = to_dict(level_config(args.level))
    if args.show_config:
        return _config.show(SynthConfig, args, base=base)
    config = _config.load(SynthConfig, args, base=base)
    if args.out is None:
        raise ValueError("--out is required")
    if args.n < 1 or args.workers < 1:
        raise ValueError(f"--n and --workers must be >= 1, got {args.n}, {args.workers}")
    start = time.perf_counter()
    samples = _generate_parallel(args.n, args.seed, config, args.workers)
    generated = time.perf_counter() - start
    formats = list(FORMATS) if args.format == "all" else [args.format]
    out = Path(args.out)
    written = write_samples(samples, out, formats, name=f"synth_{args.level}")
    save_config(config, out / "synth_config.yaml")
    check = resolution_check(config)
    print(
        f"generated {len(samples)} samples (level {args.level}, seed {args.seed}) in {generated:.1f} s; "
        f"glyph spans {check['glyph_view_px']:.2f} view px, {check['glyph_obs_px']:.1f} px in the oracle's crop"
    )
    for fmt, path in written.items():
        print(f"  {fmt:<9} {path}")
    return 0


def _generate_parallel(n: int, seed: int, config, workers: int):
    from mapo.data.synth import generate

    if workers == 1 or n < 64:
        return generate(n, seed, config)
    chunks = [range(i, min(n, i + 64)) for i in range(0, n, 64)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(_generate_chunk, [(config, seed, c.start, c.stop) for c in chunks])
        return [s for part in parts for s in part]


def _generate_chunk(job):
    from mapo.data.synth import generate_one

    config, seed, start, stop = job
    return [generate_one(config, seed, i) for i in range(start, stop)]


def _show(args: argparse.Namespace) -> int:
    from mapo.data.benchmarks import load_samples
    from mapo.data.show import render_grid

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    samples = load_samples(args.source, limit=args.n)
    if samples.report.skipped:
        print(samples.report.summary(), file=sys.stderr)
    if not samples:
        raise ValueError(f"no sample could be loaded from {args.source}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render_grid(samples, cols=args.cols, thumb=args.thumb).save(out)
    print(f"wrote {out} ({len(samples)} samples)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from mapo.data.benchmarks import load_samples

    kwargs = {"image_root": args.image_root} if args.image_root else {}
    # Decode every image in full: a truncated file passes a header check but would be skipped by eval and training.
    samples = load_samples(args.source, strict=args.strict, limit=args.limit, decode_images=True, **kwargs)
    print(samples.report.summary())
    categories: dict[str, int] = {}
    for s in samples:
        categories[s.category] = categories.get(s.category, 0) + 1
    for name, count in sorted(categories.items()):
        print(f"  category {name or '(none)'}: {count}")
    return 0 if samples.report.skipped == 0 else 1
