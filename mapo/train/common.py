"""Pieces every training recipe shares: optimiser and schedule, metrics logging,
RNG capture, atomic checkpoints and the run-directory guard.

Nothing here knows about the model or the algorithm: the SFT and RL recipes
pass in a function that saves the model, a dict of trainer state, and so on.

Run directory layout::

    RUN_DIR/config.yaml          the full config of the run (what --resume reads)
    RUN_DIR/run.json             {"kind": "sft", "fingerprint": ...}: what the guard compares
    RUN_DIR/metrics.jsonl        one JSON object per logged step
    RUN_DIR/tb/                  TensorBoard event files (same scalars)
    RUN_DIR/checkpoints/step_000100/   model/ (caller's format) + trainer.pt + state.json + checkpoint.json
    RUN_DIR/checkpoints/latest   name of the newest complete checkpoint
    RUN_DIR/.lock                held by the process training in RUN_DIR (pid inside)

Nothing in a run directory can run code when it is resumed: ``trainer.pt`` holds
only tensors and plain containers and is read with ``torch.load(weights_only=True)``
(a file holding any other pickled object is refused), ``state.json`` and
``checkpoint.json`` are JSON. ``checkpoint.json`` records the size and sha256 of
every other file of its checkpoint; resume verifies them and falls back to the
newest checkpoint that verifies, with a warning naming what is damaged.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from mapo.config import knob, to_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest"
RECORD = "checkpoint.json"  # sizes and sha256 of the checkpoint's other files
LOCK = ".lock"


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over in favour of an older one."""


# ----------------------------------------------------------------------------- optimiser


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup and a decay schedule, and gradient clipping."""

    lr: float = knob(1e-3, "peak learning rate")
    weight_decay: float = knob(0.01, "AdamW weight decay (matrices only; not norms, biases)")
    betas: tuple[float, float] = knob((0.9, 0.95), "AdamW betas")
    eps: float = knob(1e-8, "AdamW epsilon")
    schedule: Literal["cosine", "linear", "constant"] = knob("cosine", "decay after warmup: cosine, linear or constant")
    warmup_frac: float = knob(0.05, "fraction of the steps spent warming up linearly from 0")
    min_lr_ratio: float = knob(0.1, "final learning rate as a fraction of lr (cosine / linear)")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = off)")

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay only on matrices (not norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warmup, then the decay schedule."""
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """``LambdaLR`` following :func:`lr_factor` (its state_dict is just the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (``max_norm`` 0 = no clipping); return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


# ----------------------------------------------------------------------------- metrics


class MetricsLogger:
    """Appends ``{"step": s, **scalars}`` to ``metrics.jsonl`` and mirrors scalars to TensorBoard
    and, with ``wandb=PROJECT`` (the package installed), to Weights & Biases.

    On resume from step ``s``, :meth:`truncate_after` drops lines logged after ``s``
    by the interrupted run, so a resumed run's file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb: str | None = None,
                 config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self._wandb = None  # optional mirror to a Weights & Biases project (mapo.train.wandb_log)
        if wandb:
            from mapo.train.wandb_log import start_wandb

            self._wandb = start_wandb(wandb, run_dir, config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        clean = {k: _as_float(k, v) for k, v in scalars.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [line for line in read_metrics(self.path) if line["step"] <= step]
        _atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
    return float(value)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` (a partial last line from a crash is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


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


# ----------------------------------------------------------------------------- run directory


def config_fingerprint(config: Any, ignore: Iterable[str] = ()) -> str:
    """Hash of the config's YAML form without the top-level keys in ``ignore``."""
    data = {k: v for k, v in to_dict(config).items() if k not in set(ignore)}
    return hashlib.sha256(yaml.safe_dump(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare_run_dir(run_dir: str | Path, config: Any, *, kind: str, resume: bool, ignore: Iterable[str] = ()) -> Path:
    """Create (or check, when resuming) ``run_dir``; refuse to mix two different runs.

    A fresh start needs an empty or absent directory. A resume needs the same
    ``kind`` and the same config fingerprint (keys in ``ignore`` may differ, e.g.
    logging intervals); otherwise ``ValueError`` says what differs.
    """
    root = Path(run_dir)
    meta_path = root / "run.json"
    fingerprint = config_fingerprint(config, ignore)
    if resume:
        if not meta_path.is_file():
            raise ValueError(f"cannot resume {root}: no run.json there (not a run directory)")
        meta = read_json_file(meta_path)
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path} is damaged: it must hold a JSON object")
        if meta.get("kind") != kind:
            raise ValueError(f"cannot resume {root} as a {kind} run: it holds a {meta.get('kind')!r} run")
        if meta.get("fingerprint") != fingerprint:
            old = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
            diff = _diff_keys(old, to_dict(config), ignore=set(ignore))
            raise ValueError(f"{root} holds a different run (config differs at: {', '.join(diff) or '?'})")
        return root
    if root.exists() and any(p.name != LOCK for p in root.iterdir()):
        hint = "resume it with --resume" if meta_path.is_file() else "it is not a run directory"
        raise ValueError(f"run directory {root} is not empty ({hint}, or choose another --out)")
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(root / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    _atomic_write_text(meta_path, json.dumps({"kind": kind, "fingerprint": fingerprint}, indent=2) + "\n")
    return root


def _diff_keys(a: Any, b: Any, prefix: str = "", ignore: set[str] = frozenset()) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if not prefix and k in ignore:
                continue
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.", ignore)
        return out
    return [] if a == b or (isinstance(a, (list, tuple)) and list(a) == list(b or [])) else [prefix.rstrip(".")]


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
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp"
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
    _atomic_write_text(ckpt_root / LATEST, name + "\n")
    _prune(ckpt_root, keep_last)
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
    except (ValueError, KeyError, TypeError, AttributeError) as e:
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


def read_json_file(path: str | Path) -> Any:
    """The JSON in ``path``; ``ValueError`` naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is damaged: not readable JSON ({e})") from None


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
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    restore_rng_state(blob["rng"])
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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- run-directory lock


class RunDirLock:
    """An exclusive lock on a run directory, held while one process trains in it.

    ``RUN_DIR/.lock`` is locked with ``flock`` and holds the owner's pid. A second
    ``mapo train``/``mapo sft`` on the same directory is refused (``ValueError``
    naming the pid) instead of running alongside and duplicating metrics lines.
    The kernel drops an ``flock`` when its process dies, so a lock file left by a
    killed run (kill -9, power loss) is stale and is taken over. Where ``flock`` is
    not supported (some network filesystems) the pid is checked instead: a lock
    whose pid is not running on this host is stale.

    Use as a context manager; the file is removed on release.
    """

    def __init__(self, run_dir: str | Path, *, created: bool = False):
        self.path = Path(run_dir) / LOCK
        self.created = created  # the directory was made for this lock: removed on release if still empty
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(self._busy_message(self._owner())) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            owner = self._owner()
            if owner and owner.get("host") == os.uname().nodename and _pid_alive(owner.get("pid")):
                os.close(fd)
                raise ValueError(self._busy_message(owner)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self.created and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a run that stopped at its start checks leaves no empty directory behind

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _busy_message(self, owner: dict[str, Any] | None) -> str:
        who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
        return (
            f"run directory {self.path.parent} is in use by {who} (lock {self.path}); wait for it to finish, "
            "or stop it, before resuming"
        )


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def lock_run_dir(run_dir: str | Path, *, create: bool) -> RunDirLock | None:
    """Lock ``run_dir`` (creating it when ``create``); None when it does not exist and ``create`` is False.

    Resume passes ``create=False`` so a mistyped ``--resume`` path is reported by the
    resume checks rather than created here.
    """
    run_dir = Path(run_dir)
    created = False
    if create:
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        return None
    return RunDirLock(run_dir, created=created).acquire()
