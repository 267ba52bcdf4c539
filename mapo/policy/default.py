"""The embedded default policy: a warm-started tiny Qwen2.5-VL shipped in ``mapo/assets/``.

:func:`load_default` returns the policy that ``mapo demo`` and ``mapo train
policy=default`` start from. It is a checkpoint produced once by the project's own
SFT command (:data:`TRAIN_COMMAND`) and packed with :func:`ship` into
``mapo/assets/warmstart/`` together with ``manifest.json``, which names the
command, the config, the seed, the held-out metrics and the sha256 of every file.
Loading checks every file against the manifest and refuses a missing or altered
file with a message that gives the rebuild command (:data:`REBUILD_COMMAND`).

Why a shipped checkpoint rather than training at start-up: the recipe is three SFT runs
(:data:`STAGES`: localise, read on a close-up, both on the ``pattern`` level), about 28 minutes
on one CPU core, beyond ``make demo``'s budget.

What it can do (``docs/warmstart.md``, measured on held-out samples of the ``pattern`` level):
its first zoom lands on the target, it names the object's surface pattern in the crop and
answers from it (100% of 200), and without the tool it is at chance. Among distractors
(``pattern_distractors``) it rarely zooms on the object the question names: 38% accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mapo.core import shipped
from mapo.core.shipped import MANIFEST, ShippedCheckpointError

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "warmstart"
CONFIG_PATH = "configs/warmstart.yaml"
# The recipe is five SFT runs, each starting from the previous one's final/ (docs/warmstart.md):
# localise (letters), read (closeup), both on the pattern level, then shuffled options read by a
# scan of the options, then the scan's words weighted (the shipped run).
STAGES = (
    ("configs/warmstart_letters.yaml", "runs/warmstart/letters"),
    ("configs/warmstart_closeup.yaml", "runs/warmstart/closeup"),
    ("configs/warmstart_pattern.yaml", "runs/warmstart/pattern"),
    ("configs/warmstart_scan.yaml", "runs/warmstart/scan"),
    (CONFIG_PATH, "runs/warmstart/default"),
)
TRAIN_COMMAND = " && ".join(f"mapo sft --config {config} --out {out}" for config, out in STAGES)
# Stage 4 alone is shipped too (mapo/assets/warmstart_scan): it misreads some options, which is the
# headroom the demo's RL stage has to close (docs/demo.md).
SCAN_DIR = DEFAULT_DIR.parent / "warmstart_scan"
SCAN_COMMAND = " && ".join(f"mapo sft --config {config} --out {out}" for config, out in STAGES[:4])
SHIP_COMMAND = "python -m mapo.policy.default ship runs/warmstart/default"
REBUILD_COMMAND = f"{TRAIN_COMMAND} && {SHIP_COMMAND}"
# The files of a policy directory that are shipped; anything else in RUN_DIR/final stays behind.
SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "mapo_protocol.json",  # the prompts it was trained with (mapo.policy.load.PROTOCOL_FILE)
)


class DefaultPolicyError(ShippedCheckpointError):
    """The shipped default policy is missing, incomplete or does not match its manifest."""


def verify(path: str | Path = DEFAULT_DIR) -> dict[str, Any]:
    """Check every file named in ``path/manifest.json`` against its sha256; return the manifest.

    The manifest must cover the directory exactly: every shipped file listed, and no
    file present that it does not list (:func:`mapo.core.shipped.verify`).

    Raises:
        DefaultPolicyError: no manifest, a file missing, unlisted or not listed, or a hash mismatch; the message
            names the file and the command that rebuilds the checkpoint.
    """
    return shipped.verify(path, SHIPPED_FILES, what="default policy", rebuild=REBUILD_COMMAND, error=DefaultPolicyError)


def load_default(path: str | Path = DEFAULT_DIR, *, device: str = "cpu"):
    """The shipped warm-start policy (a :class:`mapo.policy.Policy`), after checking its manifest.

    Args:
        path: the checkpoint directory (default: the one inside the package).
        device: where to put the model.

    Raises:
        DefaultPolicyError: see :func:`verify`.
    """
    from mapo.policy.load import load_policy

    verify(path)
    return load_policy(path, dtype="float32", device=device)


def resolve_policy_dir(name: str | Path) -> Path:
    """The directory a policy name means: ``default`` (:data:`DEFAULT_DIR`), ``shipped:NAME`` or
    ``mapo/assets/NAME`` (the shipped checkpoint, whatever the current folder), else the path itself."""
    if str(name) == "default":
        return DEFAULT_DIR
    return shipped.shipped_dir(str(name)) or Path(name)


def load_named_policy(name: str | Path, *, dtype: str = "auto", device: str = "cpu"):
    """Load the policy ``name`` means (:func:`resolve_policy_dir`); a shipped one is checked against its manifest
    first (:func:`verify`), as ``mapo train policy=default`` and the demo check it."""
    import mapo.policy  # through the package, so that a test can stand in for load_policy

    path = resolve_policy_dir(name)
    if path.resolve().parent == DEFAULT_DIR.parent.resolve():
        verify(path)
    return mapo.policy.load_policy(path, dtype=dtype, device=device)


def _policy_field(config: dict[str, Any], key: str) -> Any:
    """``config["policy"][key]`` of an SFT config (a mapping); None for an RL config, whose ``policy`` is a path."""
    policy = config.get("policy")
    return policy.get(key) if isinstance(policy, dict) else None


def _started_from(config: dict[str, Any]) -> str | None:
    """The policy a run started from: an SFT run's ``policy.init_from``, an RL run's ``policy`` path."""
    policy = config.get("policy")
    return policy if isinstance(policy, str) else _policy_field(config, "init_from")


def earlier_stages(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The SFT runs that ``config``'s run started from, oldest first: ``{"run", "config"}`` each.

    Follows ``policy.init_from`` while it names an SFT run's ``final/`` directory with the
    run's ``config.yaml`` beside it, so a manifest records every stage of a chained recipe.
    """
    import yaml

    stages: list[dict[str, Any]] = []
    seen: set[Path] = set()
    init_from = _started_from(config)
    while init_from:
        run = Path(init_from).parent
        config_file = run / "config.yaml"
        if run.resolve() in seen or not config_file.is_file():
            break
        seen.add(run.resolve())
        try:
            stage_config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise DefaultPolicyError(f"{config_file} (an earlier stage of the run being shipped) is not valid YAML: {e}") from None
        stages.insert(0, {"run": str(run), "config": stage_config})
        init_from = _started_from(stage_config)
    return stages


def ship(
    run_dir: str | Path, out: str | Path = DEFAULT_DIR, *, command: str = TRAIN_COMMAND, config_file: str = CONFIG_PATH
) -> dict[str, Any]:
    """Copy the final policy of SFT run ``run_dir`` to ``out`` and write its manifest.

    The manifest records the command, the run's config (``RUN_DIR/config.yaml``) and those of
    the runs it started from (:func:`earlier_stages`), its seeds, the held-out metrics
    (``RUN_DIR/eval.json`` and any ``goals_*.json``) and the sha256 of every shipped file.
    """
    import yaml

    run_dir, out = Path(run_dir), Path(out)
    src = run_dir / "final"
    missing = [name for name in SHIPPED_FILES if not (src / name).is_file()]
    if missing:
        raise DefaultPolicyError(f"{src} is not a finished SFT policy: missing {', '.join(missing)}")
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(src / name, out / name)
    metrics = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(run_dir.glob("goals_*.json"))}
    if (run_dir / "eval.json").is_file():
        metrics["eval"] = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    fields = {
        "command": command,
        "config_file": config_file,
        "config": config,
        "earlier_stages": earlier_stages(config),
        "seed": {"train": config.get("seed"), "policy_init": _policy_field(config, "seed"),
                 "data": config.get("data", {}).get("seed")},
        "metrics": metrics,
    }
    return shipped.write_manifest(out, fields, SHIPPED_FILES)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mapo.policy.default", description="ship or verify the default policy")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ship", help="copy RUN_DIR/final into mapo/assets/warmstart with a manifest")
    p.add_argument("run_dir")
    p.add_argument("--out", default=str(DEFAULT_DIR))
    p.add_argument("--command", default=TRAIN_COMMAND, help="the command(s) that trained RUN_DIR, for the manifest")
    p.add_argument("--config-file", default=CONFIG_PATH, help="the config file of RUN_DIR's own stage, for the manifest")
    p = sub.add_parser("verify", help="check the shipped files against the manifest")
    p.add_argument("--path", default=str(DEFAULT_DIR))
    args = parser.parse_args(argv)
    try:
        if args.cmd == "ship":
            manifest = ship(args.run_dir, args.out, command=args.command, config_file=args.config_file)
            print(f"shipped {len(manifest['files'])} files to {args.out}")
        else:
            manifest = verify(args.path)
            print(f"ok: {len(manifest['files'])} files match {Path(args.path) / MANIFEST}")
    except (ValueError, OSError) as e:  # ShippedCheckpointError is a ValueError
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
