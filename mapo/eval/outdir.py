"""The eval directory: the fingerprint of what was evaluated, claiming (or refusing) ``OUT``, the manifest of
the files an evaluation wrote, atomic JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mapo.core.config import to_dict
from mapo.core.errors import DataError
from mapo.eval.config import EvalConfig
from mapo.eval.samples import SYNTH_SPEC
from mapo.core.fingerprint import file_digests, model_digest
from mapo.core.renames import EVAL_CONFIG_KEYS
from mapo.engine.rollout import RolloutConfig


EVAL_FILE = "eval.json"
MANIFEST_FILE = "outputs.txt"  # every image and crop an evaluation saved, one relative path a line, written before the file
SKIPPED_FILE = "skipped_rows.jsonl"  # every skipped row (file, row, id, reason, stage), rewritten at the end of a run
LOCK = ".lock"
# The files of an eval directory whose names are fixed; images/ and crops/ files are listed in MANIFEST_FILE.
OUTPUTS = ("predictions.jsonl", "metrics.json", EVAL_FILE, SKIPPED_FILE, MANIFEST_FILE)
FINGERPRINT_VERSION = 2  # 2: every weight byte and every data byte (1 hashed the ends of tensors and files)

# Config keys that do not change what is evaluated (batching, the size of the report's image copies).
FINGERPRINT_IGNORE = ("verifier_batch_size", "image_max_side")


def eval_fingerprint(data: str, policy: Any, verifier: Any | None, config: EvalConfig, rollout: RolloutConfig) -> dict[str, str]:
    """``{"model", "verifier", "data", "config"}``: short hashes of what an evaluation's records depend on.

    The model and verifier are hashed from every byte of their weights
    (:func:`mapo.core.fingerprint.model_digest`: the files a strict load read, else the
    tensors in memory); the data from every byte of its files
    (:func:`data_fingerprint`); the config from its YAML form with the resolved
    protocol, without :data:`FINGERPRINT_IGNORE` and the rollout batch size.
    """
    # A renamed key hashes under its old name, so eval directories from before the rename still resume.
    old_name = {new: old for old, new in EVAL_CONFIG_KEYS.items()}
    cfg = {old_name.get(k, k): v for k, v in to_dict(config).items() if k not in FINGERPRINT_IGNORE}
    cfg["rollout"] = {k: v for k, v in to_dict(rollout).items() if k != "batch_size"}
    protocol = cfg["rollout"].get("protocol", {})
    if not protocol.get("extra_tools"):
        # Zoom-in alone hashes as it did before the tool set was a setting, so older eval directories resume.
        protocol.pop("extra_tools", None)
    return {
        "model": _module_fingerprint(getattr(policy, "model", None)),
        "verifier": _module_fingerprint(getattr(verifier, "model", None)) if verifier is not None else "none",
        "data": data_fingerprint(data),
        "config": _digest(json.dumps(cfg, sort_keys=True, default=str).encode()),
    }


def _module_fingerprint(module: Any) -> str:
    import torch

    if not isinstance(module, torch.nn.Module):
        return "unknown"
    return model_digest(module)[:16]


def data_fingerprint(data: str) -> str:
    """Hash of a data source: every byte of every file of it.

    ``synth:N:LEVEL:SEED`` hashes without N (sample i depends only on level, seed and i).
    A folder: every file under it, by relative name and content. A file: its content,
    and for an MME-RealWorld JSON also every image file its records name (they live
    outside the file). File hashes are cached by size and mtime (:mod:`mapo.core.fingerprint`).
    """
    import hashlib

    m = SYNTH_SPEC.match(str(data))
    if m:
        return f"synth:{m.group(2) or 'easy'}:{m.group(3) or 1000003}"
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        names = [p.relative_to(path).as_posix() for p in files]
    else:
        files, names = [path], [path.name]
        images = _referenced_images(path)
        files += images
        names += [f"image:{p.relative_to(path.parent.resolve()).as_posix()}" for p in images]
    h = hashlib.sha256()
    for name, digest in zip(names, file_digests(files)):
        h.update(f"{name}:{digest};".encode())
    return h.hexdigest()[:16]


def _referenced_images(path: Path) -> list[Path]:
    """The image files an MME-RealWorld JSON's records name (``Image``, under the file's folder), sorted."""
    if path.suffix.lower() != ".json":
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return []  # the reader names what is wrong with the file
    if not isinstance(records, list):
        return []
    root = path.parent.resolve()
    found = set()
    for r in records:
        name = r.get("Image") if isinstance(r, dict) else None
        if not isinstance(name, str) or not name:
            continue
        try:
            p = (root / name).resolve()
            if p.is_relative_to(root) and p.is_file():
                found.add(p)
        except (OSError, ValueError):
            continue  # an impossible path: the reader skips that row and names it
    return sorted(found)


def _digest(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()[:16]


# ----------------------------------------------------------------------------- claiming OUT


def make_out_dir(out: Path, data: str) -> bool:
    """Create ``out`` (if needed) and check it can be written; return whether it was created here.

    Refuses an ``out`` inside the data source or holding it: the eval would write into
    the dataset (and change its fingerprint), and ``--overwrite`` could reach its files.
    """
    _refuse_overlap(out, data)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")  # a read-only directory that exists fails here, not after the first chunk
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write the eval directory {out}: {e.strerror or e}; choose another --out") from None
    return created


def _refuse_overlap(out: Path, data: str) -> None:
    """A folder source: ``out`` may not be it, be inside it, or hold it. A file source: ``out`` may not be the
    file's folder (where an MME-RealWorld file keeps its ``images/``) or hold it; a sub-folder is fine."""
    if SYNTH_SPEC.match(str(data)) or not Path(data).exists():
        return
    try:
        src, dst = Path(data).resolve(), out.resolve()
    except (OSError, RuntimeError):
        return
    folder = src if src.is_dir() else src.parent
    if dst == folder:
        where = "is the data folder"
    elif src.is_dir() and dst.is_relative_to(folder):
        where = "is inside the data folder"
    elif folder.is_relative_to(dst):
        where = "holds the data"
    else:
        return
    raise DataError(f"--out {out} {where} ({folder}); an evaluation never writes into a dataset: choose an "
                    "--out outside it")


def claim_out_dir(out: Path, fingerprint: dict[str, str], *, overwrite: bool) -> None:
    """Make ``out`` the directory of this evaluation, refusing one that holds another.

    A directory whose ``eval.json`` has the same fingerprint is resumed. One with a
    different fingerprint, or predictions without a fingerprint, is refused unless
    ``overwrite``, which deletes only the files this directory's previous evaluation
    wrote (:data:`OUTPUTS` and those listed in :data:`MANIFEST_FILE`); anything else in
    it is left alone. A directory that holds files mapo did not write and no
    evaluation is refused, with or without ``overwrite``.
    """
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / EVAL_FILE
    try:
        previous, version = _read_fingerprint(meta_path)
    except DataError:
        if not overwrite:
            raise
        previous, version = {}, 0  # damaged: replaced below, like any other evaluation
    has_records = (out / "predictions.jsonl").exists()
    if previous == fingerprint and version == FINGERPRINT_VERSION:
        return
    if previous is None and not has_records:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, ".write_test"))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DataError(f"--out {out} holds files that mapo did not write ({shown}); an evaluation only writes "
                            "into a new or empty folder, or one of its own: choose another --out")
    else:
        if not overwrite:
            if previous is None:
                what = "predictions without a fingerprint (eval.json)"
            elif version != FINGERPRINT_VERSION:
                what = ("an evaluation fingerprinted by an older mapo (it did not hash every weight and data byte, "
                        "so it cannot be told apart from this one)")
            else:
                diff = [k for k in fingerprint if previous.get(k) != fingerprint[k]]
                what = "an evaluation of a different " + ", ".join(
                    f"{k} ({previous.get(k)} -> {fingerprint[k]})" for k in diff)
            raise DataError(
                f"{out} holds {what}; merging them would mix two evaluations. Choose another --out, or pass "
                "--overwrite (overwrite=True) to replace it (only the files that evaluation wrote are removed)"
            )
        remove_outputs(out)
    _write_json_atomic(meta_path, {"fingerprint": fingerprint, "version": FINGERPRINT_VERSION})


def written_outputs(out: Path) -> list[Path]:
    """The files the evaluation in ``out`` wrote that exist: :data:`OUTPUTS` and the manifest's entries.

    Entries are kept only when they are relative paths under ``images/`` or ``crops/``
    that stay inside ``out`` (a hand-edited manifest cannot reach further). An eval
    directory written before the manifest existed has its files read from the
    records (each names its image and crops).
    """
    root = out.resolve()
    names = list(OUTPUTS)
    manifest = out / MANIFEST_FILE
    if manifest.is_file():
        names += manifest.read_text(encoding="utf-8", errors="replace").splitlines()
    elif (out / "predictions.jsonl").is_file():
        names += _legacy_outputs(out / "predictions.jsonl")
    found = []
    for name in dict.fromkeys(names):
        if name not in OUTPUTS and not (name.startswith("images/") or name.startswith("crops/")):
            continue
        try:
            p = (out / name)
            if p.resolve().is_relative_to(root) and p.is_file() and not p.is_symlink():
                found.append(p)
        except (OSError, ValueError):
            continue
    return found


def _legacy_outputs(path: Path) -> list[str]:
    from mapo.metrics.records import read_jsonl

    try:
        records = read_jsonl(path).records
    except (OSError, ValueError):
        return []
    names = []
    for r in records:
        names.append(str(r.image or ""))
        names += [str(t.crop) for t in r.turns if t.crop]
    return names


def remove_outputs(out: Path) -> int:
    """Delete the files :func:`written_outputs` lists (and ``images/``, ``crops/`` if left empty); return how many."""
    files = written_outputs(out)
    manifest = out / MANIFEST_FILE
    for p in files:
        if p != manifest:
            p.unlink(missing_ok=True)
    manifest.unlink(missing_ok=True)  # last: a crash before here leaves the list of what remains
    for sub in ("images", "crops"):
        d = out / sub
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    return len(files)


def record_outputs(out: Path, names: Iterable[str]) -> None:
    """Append ``names`` (paths relative to ``out``) to the manifest of the files this evaluation wrote."""
    lines = "".join(f"{n}\n" for n in names if n)
    if lines:
        with open(out / MANIFEST_FILE, "a", encoding="utf-8") as f:
            f.write(lines)


def _read_fingerprint(path: Path) -> tuple[dict[str, str] | None, int]:
    if not path.exists():
        return None, FINGERPRINT_VERSION
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        found, version = meta["fingerprint"], meta.get("version", 1)
    except (OSError, ValueError, KeyError, TypeError, RecursionError, AttributeError) as e:
        raise DataError(f"{path} is damaged ({e}); pass --overwrite to start this evaluation again") from None
    if not isinstance(found, dict):
        raise DataError(f"{path} is damaged (fingerprint is not a mapping); pass --overwrite to start again")
    return found, version


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    """NaN (an empty category) is not JSON: write null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


__all__ = ["EVAL_FILE", "FINGERPRINT_IGNORE", "FINGERPRINT_VERSION", "MANIFEST_FILE", "OUTPUTS", "SKIPPED_FILE",
           "claim_out_dir", "data_fingerprint", "eval_fingerprint", "make_out_dir", "record_outputs", "remove_outputs",
           "written_outputs"]
