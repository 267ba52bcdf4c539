"""The embedded default verifier: the tiny CLIP of ``configs/verifier_pattern.yaml``, shipped in ``mapo/assets/``.

``mapo demo`` and ``mapo experiment compare`` score descriptions with it
(``verifier_source: default`` in their pipeline config) instead of training a verifier on
every fresh machine (about 12 minutes on one CPU core for this recipe, the longest stage of the demo). It
is the output of :data:`TRAIN_COMMAND`, packed with :func:`ship` into
``mapo/assets/verifier/`` together with ``manifest.json``, which names the command, the
training config, the synthetic task it was trained on, the held-out metrics and the sha256
of every file. :func:`verify` checks every file against the manifest and refuses a missing,
altered or extra file with a message that gives :data:`REBUILD_COMMAND`.

What it can do (held-out crops of the ``pattern_distractors`` level, ``docs/verifier.md``):
it tells colour, shape and emptiness apart (hard-negative wins 0.96-0.99) but not the letter
or the surface pattern (about 0.5, chance).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mapo.core import shipped
from mapo.core.shipped import MANIFEST, ShippedCheckpointError

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "verifier"
CONFIG_PATH = "configs/verifier_pattern.yaml"
RUN_DIR = "runs/verifier_pattern"
TRAIN_COMMAND = f"mapo verifier train --config {CONFIG_PATH} --out {RUN_DIR}"
SHIP_COMMAND = f"python -m mapo.verifier.default ship {RUN_DIR}"
REBUILD_COMMAND = f"{TRAIN_COMMAND} && {SHIP_COMMAND}"
TRAIN_CONFIG_FILE = "verifier_train.yaml"  # what `mapo verifier train` saves its config as
# The files of a `mapo verifier train` directory that are shipped; metrics.json goes into the manifest instead.
SHIPPED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    TRAIN_CONFIG_FILE,
)


class DefaultVerifierError(ShippedCheckpointError):
    """The shipped verifier is missing, incomplete or does not match its manifest."""


def verify(path: str | Path = DEFAULT_DIR) -> dict[str, Any]:
    """Check every file named in ``path/manifest.json`` against its sha256; return the manifest.

    The manifest must cover the directory exactly (:func:`mapo.core.shipped.verify`).

    Raises:
        DefaultVerifierError: no manifest, a file missing, unlisted or not listed, or a hash mismatch; the
            message names the file and :data:`REBUILD_COMMAND`.
    """
    return shipped.verify(path, SHIPPED_FILES, what="shipped verifier", rebuild=REBUILD_COMMAND,
                          error=DefaultVerifierError)


def load_default(path: str | Path = DEFAULT_DIR, **kwargs: Any):
    """The shipped verifier (a :class:`mapo.verifier.ClipVerifier`), after checking its manifest.

    ``kwargs`` go to :func:`mapo.verifier.load_verifier` (device, dtype, caching, ``s_missing``).
    """
    from mapo.verifier.clip import load_verifier

    verify(path)
    return load_verifier(path, **kwargs)


def resolve_verifier_dir(name: str | Path) -> Path:
    """The directory a verifier name means: ``default`` (:data:`DEFAULT_DIR`), ``shipped:NAME`` or
    ``mapo/assets/NAME`` (the shipped checkpoint, whatever the current folder), else the path itself."""
    if str(name) == "default":
        return DEFAULT_DIR
    return shipped.shipped_dir(str(name)) or Path(name)


def training_config(manifest: dict[str, Any]):
    """The :class:`mapo.verifier.train.VerifierTrainConfig` recorded in ``manifest``.

    Knobs added to the config after the checkpoint was shipped take their defaults.

    Raises:
        DefaultVerifierError: the recorded config is missing or no longer loads.
    """
    from mapo.core.config import from_dict
    from mapo.verifier.train import VerifierTrainConfig

    try:
        return from_dict(VerifierTrainConfig, manifest["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise DefaultVerifierError(
            f"the shipped verifier's manifest has no usable training config ({e}); rebuild it with: {REBUILD_COMMAND}"
        ) from None


def ship(run_dir: str | Path, out: str | Path = DEFAULT_DIR, *, command: str = TRAIN_COMMAND) -> dict[str, Any]:
    """Copy the verifier that ``mapo verifier train`` wrote to ``run_dir`` into ``out`` and write its manifest.

    The manifest records the command, the run's config (``RUN_DIR/verifier_train.yaml``), the
    synthetic task it was generated from (the resolved level config, when the run generated its
    data), the held-out metrics (``RUN_DIR/metrics.json["val"]``), the other training facts of
    ``metrics.json``, and the sha256 of every shipped file. An ``out`` holding any other file is
    refused (the manifest must cover the directory exactly, and nothing is deleted).
    """
    import yaml

    run_dir, out = Path(run_dir), Path(out)
    missing = [name for name in (*SHIPPED_FILES, "metrics.json") if not (run_dir / name).is_file()]
    if missing:
        raise DefaultVerifierError(f"{run_dir} is not a finished `mapo verifier train` run: missing {', '.join(missing)}")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if "val" not in metrics:
        raise DefaultVerifierError(f"{run_dir}/metrics.json has no held-out metrics ('val'): the run did not finish")
    config = yaml.safe_load((run_dir / TRAIN_CONFIG_FILE).read_text(encoding="utf-8"))
    training = training_config({"config": config})  # refuse a config this code cannot read before copying
    others = sorted(p.name for p in out.iterdir() if p.name not in (*SHIPPED_FILES, MANIFEST)) if out.is_dir() else []
    if others:  # never delete them: --out may be a mistyped directory of someone's files
        raise DefaultVerifierError(f"{out} holds files a shipped verifier does not have ({', '.join(others)}); "
                                   "remove them or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(run_dir / name, out / name)
    fields = {
        "command": command,
        "config_file": CONFIG_PATH,
        "config": config,
        "task": task_of(training),
        "metrics": metrics["val"],
        "training": {k: v for k, v in metrics.items() if k != "val"},
    }
    return shipped.write_manifest(out, fields, SHIPPED_FILES)


def task_of(config) -> dict[str, Any] | None:
    """The resolved synthetic-task config ``config`` generates its data from; None when it reads files."""
    from mapo.data.synth import task_fingerprint

    return None if config.data is not None else task_fingerprint(config.synth_level)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mapo.verifier.default", description="ship or verify the default verifier")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ship", help="copy a `mapo verifier train` output directory into mapo/assets/verifier with a manifest")
    p.add_argument("run_dir")
    p.add_argument("--out", default=str(DEFAULT_DIR))
    p.add_argument("--command", default=TRAIN_COMMAND, help="the command that trained RUN_DIR, for the manifest")
    p = sub.add_parser("verify", help="check the shipped files against the manifest")
    p.add_argument("--path", default=str(DEFAULT_DIR))
    args = parser.parse_args(argv)
    try:
        if args.cmd == "ship":
            manifest = ship(args.run_dir, args.out, command=args.command)
            print(f"shipped {len(manifest['files'])} files to {args.out}")
        else:
            manifest = verify(args.path)
            print(f"ok: {len(manifest['files'])} files match {Path(args.path) / MANIFEST}")
    except ShippedCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
