"""The error types mapo raises for bad input, one per layer, each a ``ValueError``.

Every command turns them into one line, ``mapo CMD: message``, and exit status 2;
the message names the file (or setting) at fault and what to do about it. They
subclass ``ValueError`` so code that catches ``ValueError`` keeps working.

- :class:`ConfigError`: a ``--config`` file or ``key=value`` that cannot become a config
  (YAML that does not parse, duplicate keys, aliases that expand without bound, a value
  out of range).
- :class:`DataError`: a data source or eval/run directory that cannot be used as given.
- :class:`ModelError`: a policy or verifier directory that cannot be loaded as it is
  (damaged or mismatched files, weights that do not match the config).
- :class:`DeviceError`: a ``--device`` or ``--threads`` this machine cannot honour.
"""

from __future__ import annotations


class MapoError(ValueError):
    """Bad input, reported to the user as one line."""


class ConfigError(MapoError):
    """A config file or override that cannot become a valid config."""


class DataError(MapoError):
    """A data source, eval directory or run directory that cannot be used as given."""


class ModelError(MapoError):
    """A model directory (policy or verifier) that cannot be loaded as it is."""


class DeviceError(MapoError):
    """A device or thread count this machine cannot honour."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages run to many lines), or its type."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__
