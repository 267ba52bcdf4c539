"""Config data from layers: dataclass defaults, a YAML file, ``KEY=VALUE`` overrides.

The command line (:mod:`mapo.cli._config`) and ``mapo eval``'s settings
(:mod:`mapo.eval.config`: defaults, the model's own settings, a preset, the file,
the overrides) both build their config data with these functions.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from mapo.core.config import _read_text, apply_overrides, from_dict, load_yaml, renamed_to_current


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, with a clear error when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    loaded = load_yaml(_read_text(path), f"config file {path}") or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return loaded


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, section by section (a partial section keeps the other keys of ``base``)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_data(
    cls: type, path: str | None, items: typing.Iterable[str], *, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`resolve` without the parsed arguments: ``base``, the file at ``path`` (if any), the overrides."""
    data = dict(base or {})
    if path is not None:
        data = merge(data, read_yaml(path))
    data = renamed_to_current(cls, apply_overrides(data, items))
    check_keys(cls, data)
    return data


def check_keys(cls: type, data: dict[str, Any], prefix: str = "") -> None:
    """Raise ``ValueError`` (with a "did you mean") for a key of ``data`` that is not a knob of ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(data) - set(fields):
        from_dict(cls, data, prefix=prefix)  # raises the standard unknown-key message
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        inner = dataclass_of(hints[name])
        if inner is not None and isinstance(value, dict):
            check_keys(inner, value, prefix=f"{prefix}{name}.")


def dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    for candidate in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            return candidate
    return None
