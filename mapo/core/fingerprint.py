"""Content hashes that see every byte: of a model's weights, of files, of a data source.

What an evaluation's records depend on is identified by these hashes
(:mod:`mapo.eval.outdir`), so a changed weight in the middle of a tensor, or a
changed question in the middle of a file, is never mistaken for the old one.

- :func:`module_digest`: sha256 of every tensor of a ``torch.nn.Module``'s
  ``state_dict`` (name, shape, dtype and all bytes), tensor by tensor on a few
  threads, so only a few tensors are copied off the GPU at a time.
- :func:`model_digest`: for a model loaded strictly from files, the sha256 of those
  files (cached) with the loaded dtypes; otherwise :func:`module_digest`.
- :func:`file_digest`: sha256 of a file's bytes, read in 1 MiB blocks. The result
  is cached by the file's path, size, modification time (ns) and inode in
  ``$MAPO_CACHE_DIR/sha256.json`` (default ``~/.cache/mapo``), so resuming an
  evaluation of a large dataset does not read it again; a file rewritten in place
  changes its mtime and is hashed again. A cache that cannot be read or written is
  ignored.

Cost (``python scripts/fingerprint_cost.py``): sha256 at the CPU's speed, about 1 GB/s
per core; docs/eval.md gives the measured time for 7B-sized weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
CACHE_FILE = "sha256.json"
MAX_CACHE_ENTRIES = 100_000  # the oldest entries are dropped beyond this


WEIGHT_FILES_ATTR = "mapo_weight_files"  # set on a model loaded strictly from files (mark_loaded_from)


def mark_loaded_from(module: Any, files: Iterable[str | Path]) -> None:
    """Record on ``module`` the weight files it was loaded from, every tensor accounted for (a strict load).

    :func:`model_digest` then hashes those files (cached by size and mtime) instead of the tensors.
    """
    setattr(module, WEIGHT_FILES_ATTR, tuple(str(Path(f).resolve()) for f in files))


def model_digest(module: Any) -> str:
    """Hex sha256 identifying ``module``'s weights.

    A model loaded strictly from files (:func:`mark_loaded_from`: ``load_policy``,
    ``load_verifier``) is identified by every byte of those files (:func:`file_digests`,
    cached by size and mtime, so a resumed evaluation does not read 15 GB again), the
    dtype of each tensor as loaded, and each tensor's first and last values in memory (a
    model trained after loading differs there). Any other model: :func:`module_digest`.
    """
    files = getattr(module, WEIGHT_FILES_ATTR, None)
    if not files or not all(Path(f).is_file() for f in files):
        return module_digest(module)
    h = hashlib.sha256(b"files:")
    for f, digest in zip(files, file_digests(files)):
        h.update(f"{Path(f).name}:{digest};".encode())
    h.update(_ends_signature(module))
    return h.hexdigest()


def _ends_signature(module: Any) -> bytes:
    import torch

    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        flat = value.detach().reshape(-1)
        ends = torch.cat([flat[:32], flat[-32:]]).float().cpu().numpy().tobytes() if flat.numel() else b""
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype}:".encode() + ends)
    return h.digest()


def module_digest(module: Any, workers: int | None = None) -> str:
    """Hex sha256 over every tensor in ``module.state_dict()``: name, shape, dtype and every byte.

    Each tensor is hashed on its own (:func:`tensor_digest`), ``workers`` at a time (default:
    the CPU count, at most 8; ``hashlib`` releases the GIL on large buffers, so threads run in
    parallel), and the digest is the sha256 of the tensors' digests in ``state_dict`` order.
    Non-tensor entries (extra state) are hashed by their ``repr``.
    """
    from concurrent.futures import ThreadPoolExecutor

    items = list(module.state_dict().items())
    workers = workers or min(8, os.cpu_count() or 1)
    h = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for digest in pool.map(lambda item: tensor_digest(*item), items):
            h.update(digest)
    return h.hexdigest()


def tensor_digest(name: str, value: Any) -> bytes:
    """sha256 of one ``state_dict`` entry: its name, shape, dtype and every byte (copied to the CPU)."""
    import torch

    h = hashlib.sha256()
    if not isinstance(value, torch.Tensor):
        h.update(f"{name}:{value!r};".encode())
        return h.digest()
    t = value.detach()
    h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    if t.device.type != "meta" and t.numel() > 0:
        t = t.to("cpu").contiguous().reshape(-1)
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.digest()


def _cache_path() -> Path:
    root = os.environ.get("MAPO_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mapo"
    return Path(root) / CACHE_FILE


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, Any]) -> None:
    path = _cache_path()
    if len(cache) > MAX_CACHE_ENTRIES:
        cache = dict(list(cache.items())[-MAX_CACHE_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache folder costs only the time to hash again


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(paths: Iterable[str | Path]) -> list[str]:
    """Hex sha256 of each file's bytes (cached by path, size, mtime and inode: see the module docstring)."""
    cache = _read_cache()
    changed = False
    out = []
    for p in paths:
        path = Path(p).resolve()
        key, stat = str(path), _stat_key(path)
        hit = cache.get(key)
        if isinstance(hit, list) and len(hit) == 4 and hit[:3] == stat and isinstance(hit[3], str):
            out.append(hit[3])
            continue
        digest = _sha256_file(path)
        if _stat_key(path) == stat:  # not being written while we read it
            cache.pop(key, None)
            cache[key] = [*stat, digest]
            changed = True
        out.append(digest)
    if changed:
        _write_cache(cache)
    return out


def file_digest(path: str | Path) -> str:
    """Hex sha256 of one file's bytes (cached: :func:`file_digests`)."""
    return file_digests([path])[0]
