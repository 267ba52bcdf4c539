"""Checkpoints shipped inside the package (``mapo/assets/``) and the manifest that guards each one.

A shipped checkpoint is a directory of files plus ``manifest.json``, which records how the
checkpoint was made (command, config, held-out metrics: fields chosen by the caller) and the
sha256 of every file under ``"files"``. :func:`write_manifest` writes it; :func:`verify`
checks a directory against it. Both the warm-start policy (:mod:`mapo.policy.default`) and
the tiny CLIP verifier (:mod:`mapo.verifier.default`) go through these two functions, so a
missing, altered or extra file is refused the same way, with the command that rebuilds
the checkpoint in the message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # mapo/assets
SHIPPED_PREFIX = "shipped:"  # 'shipped:NAME' names the checkpoint mapo/assets/NAME
_ASSETS_RELATIVE = ("mapo", "assets")  # how configs write a shipped path: mapo/assets/NAME


def shipped_dir(name: str) -> Path | None:
    """The shipped checkpoint directory ``name`` names, or None when it names none.

    ``shipped:NAME`` is ``mapo/assets/NAME`` of the installed package. A relative path
    ``mapo/assets/NAME`` (as the configs write the verifier) means the same directory whatever
    the current folder, unless that path exists in the current folder. A name that
    points outside ``mapo/assets`` is refused.

    Raises:
        ValueError: ``shipped:NAME`` with no such checkpoint (the message lists the shipped ones).
    """
    if name.startswith(SHIPPED_PREFIX):
        path = ASSETS_DIR / name[len(SHIPPED_PREFIX):]
        if not name[len(SHIPPED_PREFIX):] or path.resolve().parent != ASSETS_DIR or not path.is_dir():
            names = sorted(p.name for p in ASSETS_DIR.iterdir() if (p / MANIFEST).is_file())
            raise ValueError(f"{name!r}: no shipped checkpoint of that name; shipped: {', '.join(names)}")
        return path
    parts = Path(name).parts
    if len(parts) >= 3 and parts[:2] == _ASSETS_RELATIVE and not Path(name).exists():
        path = ASSETS_DIR.joinpath(*parts[2:])
        return path if path.resolve().is_relative_to(ASSETS_DIR) else None
    return None


class ShippedCheckpointError(ValueError):
    """A shipped checkpoint is missing, incomplete or does not match its manifest."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks, so a large weight file is never held whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: str | Path, fields: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Write ``root/manifest.json``: ``fields`` plus ``"files"``, the sha256 of each of ``names`` in ``root``."""
    root = Path(root)
    manifest = {**fields, "files": {name: sha256_of(root / name) for name in names}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def verify(
    path: str | Path,
    shipped_files: Iterable[str],
    *,
    what: str,
    rebuild: str,
    error: type[ShippedCheckpointError] = ShippedCheckpointError,
) -> dict[str, Any]:
    """Check every file named in ``path/manifest.json`` against its sha256; return the manifest.

    The manifest must cover the directory exactly: every one of ``shipped_files`` listed,
    and no file present that it does not list.

    Args:
        path: the checkpoint directory.
        shipped_files: the files a complete checkpoint of this kind has.
        what: how messages name the checkpoint ("default policy", "shipped verifier").
        rebuild: the command that rebuilds it, quoted in every message.
        error: the exception class raised (a subclass, so callers can catch their own kind).

    Raises:
        error: no manifest, a file missing, unlisted or not listed, or a hash mismatch; the
            message names the file and ``rebuild``.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise error(f"no {what} at {root} ({MANIFEST} missing); rebuild it with: {rebuild}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except RecursionError:
        raise error(f"{manifest_path} is not a valid manifest (nested too deeply); rebuild with: {rebuild}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise error(f"{manifest_path} is not a valid manifest ({e}); rebuild with: {rebuild}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise error(f"{manifest_path} is not a valid manifest (files must map names to sha256 texts); rebuild with: "
                    f"{rebuild}")
    _check_coverage(root, files, shipped_files, what=what, rebuild=rebuild, error=error)
    missing = sorted(name for name in files if not (root / name).is_file())
    if missing:
        raise error(f"{what} at {root} is missing {', '.join(missing)}; rebuild it with: {rebuild}")
    changed = sorted(name for name, digest in files.items() if sha256_of(root / name) != digest)
    if changed:
        raise error(
            f"{what} at {root}: {', '.join(changed)} does not match the sha256 in {MANIFEST} "
            f"(altered or corrupted); rebuild it with: {rebuild}"
        )
    return manifest


def _check_coverage(
    root: Path, files: dict[str, Any], shipped_files: Iterable[str], *, what: str, rebuild: str,
    error: type[ShippedCheckpointError],
) -> None:
    """The manifest must list every shipped file and every file in ``root``.

    A hash check over the listed files alone would pass a manifest whose list was
    emptied, or a directory with an extra file (an adapter, a second weight file)
    that the loader would pick up unchecked.
    """
    unshipped = sorted(set(shipped_files) - set(files))
    if unshipped:
        raise error(
            f"{root / MANIFEST} does not list {', '.join(unshipped)} (every shipped file needs its sha256); "
            f"rebuild it with: {rebuild}"
        )
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    unlisted = sorted(present - set(files) - {MANIFEST})
    if unlisted:
        raise error(
            f"{what} at {root} holds file(s) its {MANIFEST} does not list: {', '.join(unlisted)}; "
            f"remove them or rebuild it with: {rebuild}"
        )
