"""A config-keyed cache of pipeline stages: ``cache_dir/<stage>-<hash of its config>``.

A stage whose output is a pure function of its config is built once in a temporary
directory, renamed into place when finished (an interrupted build leaves nothing that
looks finished), and reused by every later run with the same config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapo.core.config import to_dict

# Bump when a stage's code changes what it writes, so old cache entries stop matching.
STAGE_VERSION = 1
# Config keys that change how fast a stage runs, never what it produces: left out of cache keys.
SPEED_ONLY_KEYS = frozenset({"threads", "num_threads", "progress", "log_every", "tensorboard", "wandb", "eval_every",
                             "save_every", "keep_last"})

def config_key(config: Any) -> str:
    """12 hex digits of the sha256 of ``config`` (a dataclass or mapping), speed-only keys left out."""
    data = drop_keys(to_dict(config), SPEED_ONLY_KEYS)
    text = json.dumps({"version": STAGE_VERSION, "config": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def drop_keys(data: Any, keys: frozenset) -> Any:
    if isinstance(data, dict):
        return {k: drop_keys(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [drop_keys(v, keys) for v in data]
    return data


def cached_stage(
    name: str, config: Any, build: Callable[[Path], None], cache_dir: str | Path, log: Callable[[str], None] = print
) -> tuple[Path, bool]:
    """``cache_dir/<name>-<config_key>``, built by ``build(tmp_dir)`` unless it exists; returns (path, reused).

    ``build`` writes into a fresh temporary directory next to the target, which is
    renamed into place only when ``build`` returns: a crash leaves no half-built stage.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{name}-{config_key(config)}"
    if target.is_dir():
        log(f"reusing {name}: {target}")
        return target, True
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"building {name}: {target}")
    try:
        build(tmp)
        (tmp / "stage.json").write_text(json.dumps({"stage": name, "config": to_dict(config)}, indent=1, default=str) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            log(f"{name} was built concurrently by another process: using {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, False
