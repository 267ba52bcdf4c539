"""The run directory: its config fingerprint (what ``--resume`` checks), atomic writes, and the lock
that keeps two trainings out of one directory."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mapo.core.config import to_dict
from mapo.core.errors import DataError

LOCK = ".lock"


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
    atomic_write_text(root / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    atomic_write_text(meta_path, json.dumps({"kind": kind, "fingerprint": fingerprint}, indent=2) + "\n")
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


def read_json_file(path: str | Path) -> Any:
    """The JSON in ``path``; ``ValueError`` naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is damaged: not readable JSON ({e})") from None


def atomic_write_text(path: Path, text: str) -> None:
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

    def __init__(self, run_dir: str | Path, *, created: bool = False, what: str = "run directory"):
        self.path = Path(run_dir) / LOCK
        self.what = what  # how messages name the directory ("run directory", "eval directory")
        self.created = created  # the directory was made for this lock: removed on release if still empty
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        try:
            # O_NOFOLLOW: a .lock that is a symbolic link (to a file elsewhere) is refused, never written through.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(f"the lock {self.path} is a symbolic link; mapo does not write through links: "
                                "remove it and try again") from None
            raise DataError(f"cannot create the lock {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(self._busy_message(self._owner())) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            owner = self._owner()
            if owner and owner.get("host") == os.uname().nodename and _pid_alive(owner.get("pid")):
                os.close(fd)
                raise DataError(self._busy_message(owner)) from None
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
            f"{self.what} {self.path.parent} is in use by {who} (lock {self.path}); wait for it to finish, "
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
