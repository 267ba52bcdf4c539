"""Atomic checkpoints: ``RUN_DIR/checkpoints/step_NNNNNN`` with a size-and-sha256 record, resume from the
newest one that verifies, and the RNG states they carry.

Nothing in a checkpoint can run code when it is resumed: ``trainer.pt`` holds only tensors and plain
containers and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mapo.core.errors import DataError
from mapo.core.run_dir import atomic_write_text, read_json_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
RECORD = "checkpoint.json"  # sizes and sha256 of the checkpoint's other files


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over in favour of an older one."""


# ----------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and CUDA when present) generator states."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    save_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write ``checkpoints/step_{step:06d}`` atomically and point ``latest`` at it.

    ``save_model(dir)`` writes the model (e.g. ``Policy.save``: safetensors + processor);
    optimizer, scheduler and RNG states go to ``trainer.pt`` (tensors and plain
    containers only); ``state`` (JSON-able: step, data cursor, …) to ``state.json``;
    the size and sha256 of each of these files to ``checkpoint.json``. Everything is written into a temporary
    directory that is renamed into place, so a crash never leaves a half checkpoint
    that resume would pick up. Older checkpoints beyond ``keep_last`` are deleted.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:06d}"
    tmp = ckpt_root / f".{name}.tmp"
    try:
        final = _write_checkpoint(ckpt_root, name, tmp, step, save_model, optimizer, scheduler, state)
    except OSError as e:
        # A full disk (or a quota, or a vanished mount): drop the half-written copy and stop with one line;
        # the previous checkpoint was never touched, so resume starts from it.
        shutil.rmtree(tmp, ignore_errors=True)
        sound = latest_checkpoint(run_dir)
        last = f"the last sound checkpoint is {sound}" if sound else "there is no earlier checkpoint"
        raise CheckpointWriteError(
            f"cannot write checkpoint {name} in {ckpt_root}: {e.strerror or e}; training stopped, {last}. "
            f"Free some space, then resume with --resume {run_dir}"
        ) from None
    _prune(ckpt_root, keep_last)
    return final


class CheckpointWriteError(DataError):
    """A checkpoint could not be written (full disk …); the previous one is intact."""


def _write_checkpoint(ckpt_root: Path, name: str, tmp: Path, step: int, save_model: Callable[[Path], None],
                      optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(tmp / "model")
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng_state()},
        tmp / "trainer.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": int(step), **state}, indent=2) + "\n", encoding="utf-8")
    (tmp / RECORD).write_text(json.dumps({"files": _file_record(tmp)}, indent=2) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / LATEST, name + "\n")
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that is complete and verifies, or None.

    Candidates are tried newest first (the ``latest`` pointer, then ``step_*`` by
    step); one that fails :func:`verify_checkpoint` (a truncated ``trainer.pt`` or
    ``model.safetensors``, a corrupt ``state.json``) is passed over with a
    :class:`CheckpointWarning` naming the file, so resume falls back to the newest
    sound checkpoint instead of crashing on the damaged one.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS
    if not ckpt_root.is_dir():
        return None
    candidates = sorted((p for p in ckpt_root.glob("step_*") if p.is_dir()), reverse=True)
    pointer = ckpt_root / LATEST
    if pointer.is_file():
        named = ckpt_root / pointer.read_text(encoding="utf-8", errors="replace").strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for ckpt in candidates:
        if not (ckpt / "state.json").is_file():
            continue  # never finished (the rename makes this rare); not worth a warning
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        warnings.warn(f"skipping damaged checkpoint {ckpt}: {problem}; trying an older one", CheckpointWarning, stacklevel=2)
    return None


def verify_checkpoint(ckpt: str | Path) -> str | None:
    """Why checkpoint ``ckpt`` cannot be resumed from, or None when it verifies.

    Checks ``state.json`` parses, and every file in ``checkpoint.json`` has its
    recorded size and sha256 (checkpoints written before the record existed are
    checked for ``state.json`` only).
    """
    ckpt = Path(ckpt)
    try:
        read_json_file(ckpt / "state.json")
    except ValueError as e:
        return str(e)
    record_path = ckpt / RECORD
    if not record_path.is_file():
        return None  # written before checkpoints carried a record: a damaged file is named when it is loaded
    try:
        files = read_json_file(record_path)["files"]
        expected = {str(name): (int(v["size"]), str(v["sha256"])) for name, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        return f"{record_path} is damaged ({e})"
    for name, (size, digest) in sorted(expected.items()):
        path = ckpt / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} recorded (truncated or altered)"
        if _sha256(path) != digest:
            return f"{path} does not match its recorded sha256 (altered or corrupted)"
    return None


def _file_record(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256}}`` of every file under ``root``."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_trainer_state(ckpt: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from ``ckpt``; return its ``state.json``.

    ``trainer.pt`` is read with ``weights_only=True``: a file holding any pickled
    object other than tensors and plain containers (which could run code on load)
    is refused with ``ValueError``, as is a truncated one. The model is the caller's
    business (it was written by ``save_model``), so that the caller can rebuild it,
    e.g. with ``load_policy(ckpt / "model")``.
    """
    ckpt = Path(ckpt)
    path = ckpt / "trainer.pt"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain containers, "
            f"which could run code when loaded ({first}). A run directory from someone else is not safe "
            "to resume unless it was written by mapo."
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is damaged (truncated or not a trainer state): {e}") from None
    if not isinstance(blob, dict) or not {"optimizer", "scheduler", "rng"} <= set(blob):
        raise ValueError(f"{path} is not a trainer state (expected optimizer, scheduler and rng entries)")
    try:
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        restore_rng_state(blob["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise DataError(f"{path} does not fit this run (damaged, or from another model or optimizer: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); resume from another "
                        "checkpoint or start a new run") from None
    state = read_json_file(ckpt / "state.json")
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{ckpt / 'state.json'} is damaged: it must be a JSON object with a step")
    return state


def _prune(ckpt_root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
