"""Progress of long loops: a live bar on a terminal, one plain line per step in a log file.

Runs under ``nohup`` or SLURM write to a file, where a live bar becomes a smear of
carriage returns and rich tables wrap at 80 columns. So every loop reports through
:class:`StepProgress`, whose ``mode`` is:

- ``bar``: a rich progress bar on stderr (what ``auto`` picks on a terminal);
- ``lines``: one plain line per reported step on stderr (what ``auto`` picks
  otherwise, and what ``--no-progress`` asks for), e.g.
  ``rl mapo step 12/50  reward 0.531  acc 0.410  tool 0.880  3.21 s/step  eta 2m02s``;
- ``off``: nothing.

``True`` and ``False`` mean ``auto`` and ``off`` (the older boolean ``progress=`` arguments).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal that can redraw a bar."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def resolve_mode(progress: bool | str, stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``off`` for a ``progress`` argument (a mode, or True / False)."""
    mode = {True: "auto", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)} (or True/False), got {progress!r}")
    if mode == "auto":
        return "bar" if is_terminal(stream) else "lines"
    return mode


def format_duration(seconds: float) -> str:
    """``42s``, ``2m02s``, ``1h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_line(name: str, step: int, total: int, fields: dict[str, float], step_s: float | None) -> str:
    """One plain progress line: name, step/total, the fields, seconds per step and the ETA."""
    parts = [f"{name} step {step}/{total}"] + [f"{k} {_num(v)}" for k, v in fields.items()]
    if step_s is not None:
        parts += [f"{step_s:.2f} s/step", f"eta {format_duration(step_s * max(0, total - step))}"]
    return "  ".join(parts)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


class StepProgress:
    """Report a loop of ``total`` steps that starts at ``start`` (a resumed run starts later).

    ``every``: in ``lines`` mode, print every this many steps (and always the last one).
    Seconds per step are averaged over the steps of this invocation, so a resumed run's
    ETA is not skewed by the steps it did not run.
    """

    def __init__(self, name: str, total: int, *, start: int = 0, mode: bool | str = "auto", every: int = 1,
                 stream: TextIO | None = None) -> None:
        self.name, self.total, self.start, self.every = name, total, start, max(1, every)
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(mode, self.stream)
        self._bar = self._task = None
        self._started = time.perf_counter()

    def __enter__(self) -> StepProgress:
        self._started = time.perf_counter()
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(
                TextColumn(f"[bold]{self.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=Console(file=self.stream),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.name, total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, fields: dict[str, float] | None = None) -> None:
        """Step ``step`` (1-based, of ``total``) is done; ``fields`` are shown next to it."""
        fields = fields or {}
        if self.mode == "bar":
            info = "  ".join(f"{k} {_num(v)}" for k, v in fields.items())
            self._bar.update(self._task, completed=step, info=info)
        elif self.mode == "lines" and ((step - self.start) % self.every == 0 or step == self.total):
            done = step - self.start
            step_s = (time.perf_counter() - self._started) / done if done > 0 else None
            print(format_line(self.name, step, self.total, fields, step_s), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (resume, evaluation), above the bar or between the progress lines."""
        if self.mode == "bar":
            self._bar.console.print(text, markup=False, highlight=False)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)


def say(text: str, mode: bool | str = "auto") -> None:
    """Print a one-off status line (``resuming from step N``) to stderr unless progress is off."""
    if resolve_mode(mode) != "off":
        print(text, file=sys.stderr, flush=True)


def console():
    """A rich console for tables: full width on a terminal, no wrapping at 80 columns in a file."""
    from rich.console import Console

    return Console() if is_terminal(sys.stdout) else Console(width=200, soft_wrap=True)
