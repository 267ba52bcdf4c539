"""The eval directory: the fingerprint of what was evaluated, claiming (or refusing) ``OUT``, atomic JSON."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mapo.config import to_dict
from mapo.eval.config import EvalConfig
from mapo.eval.samples import SYNTH_SPEC
from mapo.rollout import RolloutConfig


EVAL_FILE = "eval.json"

OUTPUTS = ("predictions.jsonl", "metrics.json", EVAL_FILE, "images", "crops")

# Config keys that do not change what is evaluated (batching, the size of the report's image copies).
FINGERPRINT_IGNORE = ("verifier_batch_size", "image_max_side")


def eval_fingerprint(data: str, policy: Any, verifier: Any | None, config: EvalConfig, rollout: RolloutConfig) -> dict[str, str]:
    """``{"model", "verifier", "data", "config"}``: short hashes of what an evaluation's records depend on.

    The model and verifier are hashed from their weights in memory (names, shapes,
    dtypes and the first and last values of every tensor: cheap, and two
    checkpoints differ there); the data from its files (:func:`data_fingerprint`);
    the config from its YAML form with the resolved protocol, without
    :data:`FINGERPRINT_IGNORE` and the rollout batch size.
    """
    cfg = {k: v for k, v in to_dict(config).items() if k not in FINGERPRINT_IGNORE}
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
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        ends = torch.cat([flat[:32], flat[-32:]]).float().cpu().numpy().tobytes()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode() + ends)
    return h.hexdigest()[:16]


def data_fingerprint(data: str) -> str:
    """Hash of a data source: ``synth:N:LEVEL:SEED`` without N (sample i depends only on level,
    seed and i); a file or folder from every file's name, size, first and last 64 KiB."""
    m = SYNTH_SPEC.match(str(data))
    if m:
        return f"synth:{m.group(2) or 'easy'}:{m.group(3) or 1000003}"
    path = Path(data)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
            if f.stat().st_size > 1 << 17:
                fh.seek(-(1 << 16), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def claim_out_dir(out: Path, fingerprint: dict[str, str], *, overwrite: bool) -> None:
    """Make ``out`` the directory of this evaluation, refusing one that holds another.

    A directory whose ``eval.json`` has the same fingerprint is resumed. One with a
    different fingerprint, or predictions without a fingerprint, is refused unless
    ``overwrite``, which deletes the previous outputs (:data:`OUTPUTS`) first.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")  # a read-only directory that exists fails here, not after the first chunk
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write the eval directory {out}: {e.strerror or e}") from None
    meta_path = out / EVAL_FILE
    previous = _read_fingerprint(meta_path)
    has_records = (out / "predictions.jsonl").exists()
    if previous == fingerprint:
        return
    if previous is not None or has_records:
        if not overwrite:
            what = (f"an evaluation of a different {', '.join(k for k in fingerprint if previous.get(k) != fingerprint[k])}"
                    if previous else "predictions without a fingerprint (eval.json)")
            raise ValueError(
                f"{out} holds {what}; merging them would mix two evaluations. Choose another --out, or pass "
                "--overwrite (overwrite=True) to replace it"
            )
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    _write_json_atomic(meta_path, {"fingerprint": fingerprint})


def _read_fingerprint(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); pass --overwrite to start this evaluation again") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is damaged (fingerprint is not a mapping); pass --overwrite to start again")
    return found


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
