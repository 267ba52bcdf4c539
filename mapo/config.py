"""Configuration: frozen dataclasses, loaded from YAML with command-line overrides.

Every config in mapo is a frozen dataclass. A field's ``help`` metadata (set with
:func:`knob`) is its only documentation: ``mapo <cmd> --show-config`` prints it,
and the YAML loader rejects keys that are not fields, naming the valid ones.
Overrides are ``dotted.key=value`` strings whose value is parsed as YAML
(``lr=3e-4``, ``tags.answer=ans``, ``sizes=[1,2]``).

Invalid combinations are rejected in each dataclass's ``__post_init__`` with a
message that says why.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help text (the field's documentation)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def partial(cls: type) -> type:
    """A frozen dataclass with the fields of config ``cls``, each optional: ``None`` means "not set".

    For a section that overrides part of another config (the synthetic task's
    knobs on top of a level preset, the RL stage's keys on top of the pipeline's):
    keys are checked and typed like ``cls``'s (an unknown key is an error with a
    "did you mean"), and :func:`to_dict` keeps only the keys that are set, so the
    section serialises as the mapping the user wrote. ``cls``'s own checks run
    when the receiver builds the full config. Nested config fields become partials too.
    """
    if hasattr(cls, "partial_of"):
        return cls
    if cls in _PARTIALS:
        return _PARTIALS[cls]
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):  # a nested section: an empty partial of it, so nested keys read directly
            specs.append((f.name, partial(inner), knob(factory=partial(inner), help=f.metadata.get("help", ""))))
            continue
        specs.append((f.name, tp | None, knob(None, f.metadata.get("help", ""))))
    made = dataclasses.make_dataclass(f"Partial{cls.__name__}", specs, frozen=True, namespace={
        "__doc__": f"Keys of {cls.__name__} to set; unset keys (None) keep the receiver's values.",
        "partial_of": cls,
        "set_keys": lambda self: to_dict(self),
    })
    _PARTIALS[cls] = made
    return made


_PARTIALS: dict[type, type] = {}


def is_partial(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a :func:`partial` config class."""
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(type(obj), "partial_of")


def to_dict(obj: Any) -> Any:
    """Recursively turn a config dataclass into plain YAML-safe data (a :func:`partial` keeps its set keys only)."""
    if is_partial(obj):
        values = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {k: v for k, v in values.items() if v is not None and not (v == {} and is_partial(getattr(obj, k)))}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert YAML data to the annotated field type, with a clear error."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ValueError(f"config key '{where}' may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key '{where}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where + ".")
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{where}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"config key '{where}' must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"config key '{where}' must be a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"config key '{where}' must be an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key '{where}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"config key '{where}' must be a string, got {value!r}")
        return str(value)
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"config key '{where}' must be one of {list(allowed)}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a mapping; unknown keys raise ``ValueError`` naming the valid ones."""
    if not isinstance(data, dict):
        raise ValueError(f"config for '{prefix or cls.__name__}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints = "".join(_did_you_mean(prefix, k, fields) for k in unknown)
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}{hints}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _did_you_mean(prefix: str, key: str, valid: typing.Iterable[str]) -> str:
    """`` (did you mean 'prefix.steps'?)`` for the nearest valid key, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b=value`` overrides applied (values parsed as YAML)."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. lr=1e-4)")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ValueError(f"override {item!r} has an empty key")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file, then apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    return from_dict(cls, apply_overrides(data, overrides))


def find_config_file(path: str | Path) -> Path | None:
    """``path`` if it is a file; else, when relative, the same path in the source checkout mapo runs from.

    Configs in ``configs/`` name each other by paths relative to the checkout
    (``warmstart.sft_config: configs/warmstart.yaml``); this keeps them working from
    another folder. None when neither exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    beside = Path(__file__).resolve().parents[1] / path
    return beside if not path.is_absolute() and beside.is_file() else None


def save_config(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per (nested) field: ``key: type = default  # help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            lines.append(f"{prefix}{f.name}:  # {f.metadata.get('help', '')}")
            lines.extend(describe(inner, prefix + "  "))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "<required>"
        lines.append(f"{prefix}{f.name} = {to_dict(default)!r}  # {f.metadata.get('help', '')}")
    return lines
