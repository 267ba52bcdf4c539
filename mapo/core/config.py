"""Configuration: frozen dataclasses, loaded from YAML with command-line overrides.

Every config in mapo is a frozen dataclass. A field's ``help`` metadata (set with
:func:`knob`) is its only documentation: ``mapo <cmd> --show-config`` prints it,
and the YAML loader rejects keys that are not fields, naming the valid ones.
Overrides are ``dotted.key=value`` strings whose value is parsed as YAML
(``lr=3e-4``, ``tags.answer=ans``, ``sizes=[1,2]``).

Invalid combinations are rejected in each dataclass's ``__post_init__`` with a
message that says why. Every number must be finite (``.nan`` and ``.inf`` are refused).

YAML is read by :func:`load_yaml`, stricter than ``yaml.safe_load``: a key given twice in
one mapping is an error (YAML would silently keep the last), aliases may not expand to more
than :data:`MAX_CONFIG_VALUES` values nor refer to themselves ("billion laughs"), nesting is
bounded, and any error is a :class:`~mapo.core.errors.ConfigError` naming the file and line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mapo.core.errors import ConfigError

T = TypeVar("T")

MAX_CONFIG_VALUES = 100_000  # values a config may hold once its YAML aliases are expanded
MAX_CONFIG_DEPTH = 64  # nesting of mappings and lists


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of base: an intended override
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (lines {first} and {line}); keep one",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """The data in YAML ``text`` (``where`` names it in errors: a file, an override); see the module docstring.

    Raises:
        ConfigError: not YAML, a tag other than plain data (``!!python/...``), a duplicate key,
            aliases that expand without bound or refer to themselves, or nesting too deep.
    """
    if _flow_depth(text) > MAX_CONFIG_DEPTH:  # checked before parsing: PyYAML takes seconds to fail on 100,000 '['
        raise ConfigError(f"{where} is nested more than {MAX_CONFIG_DEPTH} levels deep; a config is not")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where} is not a valid config: {problem}{at}; configs hold plain YAML values "
                          "(mappings, lists, numbers, text)") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config") from None
    check_size(data, where)
    return data


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text`` outside quotes and comments (a cheap over-estimate)."""
    depth = deepest = 0
    quote = None
    comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def check_size(data: Any, where: str) -> None:
    """:class:`ConfigError` when ``data`` (as aliases would expand it) holds more than :data:`MAX_CONFIG_VALUES`
    values, nests deeper than :data:`MAX_CONFIG_DEPTH`, or contains itself."""
    count = 0
    stack: list[tuple[Any, int, tuple[int, ...]]] = [(data, 0, ())]
    while stack:
        node, depth, path = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases of aliases?); "
                              "a config is far smaller: write the values out")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_CONFIG_DEPTH} levels deep; a config is not")
        if isinstance(node, (dict, list)):
            if id(node) in path:
                raise ConfigError(f"{where} refers to itself (a YAML alias inside its own anchor)")
            children = node.values() if isinstance(node, dict) else node
            inner = (*path, id(node))
            stack.extend((child, depth + 1, inner) for child in children)


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
            number = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"config key '{where}' must be a finite number, got {value!r}")
        return number
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


def renamed_to_current(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the old names of ``cls``'s renamed keys (its ``renamed_keys``: old -> new) written as the new ones.

    The one place a renamed config key is read under its old name, so files and
    overrides written before the rename keep working; a value under the old name wins
    (it came from the user, the new name may hold a layered default).
    """
    renamed = getattr(cls, "renamed_keys", {})
    if not isinstance(data, dict) or not any(old in data for old in renamed):
        return data
    out = {k: v for k, v in data.items() if k not in renamed}
    out.update({renamed[old]: value for old, value in data.items() if old in renamed})
    return out


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a mapping; unknown keys raise ``ValueError`` naming the valid ones."""
    if not isinstance(data, dict):
        raise ValueError(f"config for '{prefix or cls.__name__}' must be a mapping, got {type(data).__name__}")
    data = renamed_to_current(cls, data)
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
        node[parts[-1]] = load_yaml(raw, f"override {key.strip()}=...") if raw.strip() else ""
    check_size(out, "the config with its overrides")
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
        loaded = load_yaml(_read_text(path), f"config file {path}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    return from_dict(cls, apply_overrides(data, overrides))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None


def find_config_file(path: str | Path) -> Path | None:
    """``path`` if it is a file; else, when relative, the same path in the source checkout mapo runs from.

    Configs in ``configs/`` name each other by paths relative to the checkout
    (``warmstart.sft_config: configs/warmstart.yaml``); this keeps them working from
    another folder. None when neither exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    beside = Path(__file__).resolve().parents[2] / path  # the checkout: mapo/core/config.py -> ../..
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
