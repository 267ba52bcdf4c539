"""One grammar for every command that has a config.

``mapo CMD [--config FILE] [KEY=VALUE ...] [--show-config]``:

- ``--config FILE``: a YAML file of the command's config dataclass;
- ``KEY=VALUE`` (dotted keys, values parsed as YAML) after the options, applied
  after the file; ``--set KEY=VALUE ...`` is the same thing under its older
  spelling (kept as an alias, so existing scripts keep working);
- ``--show-config``: print the *effective* config, after ``--config`` and the
  overrides, one ``key: value  # help`` line per knob, and exit. The output is
  YAML: saved to a file, it is a valid ``--config``.

Flags such as ``--steps`` or ``--algo`` that some commands keep are shorthands
for an override; each command passes them to :func:`load` as ``extra``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from mapo.core.config_files import dataclass_of, merge, resolve_data

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, *, example: str, default_config: str | None = None) -> None:
    """``--config``, ``--set``, ``--show-config`` and the trailing ``KEY=VALUE`` overrides."""
    default = f" (default: {default_config})" if default_config else " (default: built-in defaults)"
    parser.add_argument("--config", default=None, metavar="FILE", help=f"YAML config file{default}")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], dest="set_overrides", metavar="KEY=VALUE",
        help="alias of the trailing KEY=VALUE overrides (older spelling)",
    )
    parser.add_argument("--show-config", action="store_true",
                        help="print the effective config (after --config and overrides) with each knob's help, and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides applied after --config, e.g. {example}")


def overrides(args: argparse.Namespace, extra: typing.Iterable[str] = ()) -> list[str]:
    """The trailing ``KEY=VALUE`` overrides, then ``--set``'s, then ``extra`` (shorthand flags win)."""
    return [*args.overrides, *args.set_overrides, *extra]


def resolve(
    cls: type,
    args: argparse.Namespace,
    *,
    base: dict[str, Any] | None = None,
    extra: typing.Iterable[str] = (),
    config_path: str | None = None,
) -> dict[str, Any]:
    """The config data: ``base`` (default: nothing, i.e. the dataclass defaults), the file, then the overrides.

    ``config_path`` replaces ``args.config`` (a command that resolves a default file passes it).
    Keys that are not knobs of ``cls`` raise ``ValueError`` naming the nearest one.
    """
    path = config_path if config_path is not None else args.config
    return resolve_data(cls, path, overrides(args, extra), base=base)


def load(cls: type[T], args: argparse.Namespace, **kwargs: Any) -> T:
    """``cls`` built from :func:`resolve` (typed and checked like any config)."""
    from mapo.core.config import from_dict

    return from_dict(cls, resolve(cls, args, **kwargs))


def show(
    cls: type,
    args: argparse.Namespace,
    *,
    expand: typing.Callable[[Any], dict[str, Any]] | None = None,
    skip: typing.Iterable[str] = (),
    **kwargs: Any,
) -> int:
    """Print the effective config of ``cls`` (:func:`resolve`'s data) as commented YAML; returns 0.

    A config that does not validate yet (``mapo train`` without a ``policy``) is still shown,
    with the defaults filled in, and the reason goes to stderr. ``expand(config)`` maps a dotted
    key whose field is a plain mapping (the demo's ``rl``) to the config object it resolves to.
    """
    import sys

    from mapo.core.config import from_dict, to_dict

    data = resolve(cls, args, **kwargs)
    try:
        config = from_dict(cls, data)
    except ValueError as e:
        print(f"note: this config does not validate yet: {e}", file=sys.stderr)
        values, objects = merge(defaults(cls), data), {}
    else:
        values, objects = to_dict(config), (expand(config) if expand else {})
    print("\n".join(render(cls, values, expand=objects, skip=frozenset(skip))))
    return 0


def defaults(cls: type) -> dict[str, Any]:
    """The default of every knob of ``cls`` as plain data, without building ``cls`` (whose checks may fail)."""
    from mapo.core.config import to_dict

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = to_dict(f.default_factory())  # type: ignore[misc]
    return out


def render(
    cls: type, values: dict[str, Any], *, expand: dict[str, Any] | None = None, skip: frozenset[str] = frozenset(),
    prefix: str = "",
) -> list[str]:
    """YAML lines ``key: value  # help`` of ``values`` (plain data of a ``cls``), nested sections indented.

    ``expand`` maps a dotted key to a config object shown knob by knob in place of the plain
    value; ``skip`` lists dotted keys to leave out (values the command fills in itself).
    """
    from mapo.core.config import to_dict

    expand = expand or {}
    hints = typing.get_type_hints(cls)
    depth = "  " * prefix.count(".")
    lines = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in skip or f.name not in values:
            continue
        comment = f"  # {f.metadata['help']}" if f.metadata.get("help") else ""
        inner, value = dataclass_of(hints[f.name]), values[f.name]
        if key in expand:
            inner, value = type(expand[key]), to_dict(expand[key])
        if inner is not None and isinstance(value, dict) and value:  # an empty section stays `{}`, not null
            lines.append(f"{depth}{f.name}:{comment}")
            lines.extend(render(inner, value, expand=expand, skip=skip, prefix=key + "."))
        else:
            lines.append(f"{depth}{f.name}: {_yaml_value(value)}{comment}")
    return lines


def _yaml_value(value: Any) -> str:
    """One-line YAML of a knob's value: JSON, which YAML reads back unchanged."""
    return json.dumps(value, ensure_ascii=False)


def default_config(name: str, command: str) -> str:
    """``configs/<name>``, from the current folder or the source checkout mapo runs from.

    A command whose default is a file in ``configs/`` must not quietly build something
    else when run from another folder, so a missing default is an error.
    """
    from mapo.core.config import find_config_file

    found = find_config_file(Path("configs") / name)
    if found is None:
        raise FileNotFoundError(
            f"{command} reads configs/{name} by default, and there is none in this folder or in the source "
            f"checkout of mapo; run it from the checkout, or pass --config FILE"
        )
    return str(found)
