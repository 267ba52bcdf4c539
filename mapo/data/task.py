"""The typed task spec a sample carries, and the zoom tool's budgets it implies.

A :class:`TaskSpec` is what the generator of a sample knew about its task: the
question family, the object grid, and the pixel budgets of the
model's global view and of a zoomed observation. The synthetic generator sets
it (:func:`mapo.data.synth.generate_one`); mapo's own writers store it and its
readers restore it, so it survives a write -> read round trip. Benchmark samples
(V*, HR-Bench, ...) have none: they are scored under the run's tool budgets.

:func:`tool_config_for` is the one place a task's pixel budgets become a
:class:`~mapo.agent.tools.ToolConfig`; training, SFT, evaluation and the pipeline all
call it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mapo.agent import tools

FAMILIES = ("glyph", "ink", "pattern", "relative")


@dataclass(frozen=True)
class TaskSpec:
    """What a sample's generator knew: question family, object grid and pixel budgets."""

    view_side: int  # side of the model's global view (view budget = view_side^2 pixels)
    obs_side: int  # side of a zoomed observation (observation budget = obs_side^2 pixels)
    grid: int = 4  # objects sit in a grid x grid layout of cells
    family: str = ""  # what the question asks: one of FAMILIES, or "" when unknown

    def __post_init__(self) -> None:
        for name in ("view_side", "obs_side", "grid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TaskSpec.{name} must be a positive integer, got {value!r}")
        if self.family not in ("", *FAMILIES):
            raise ValueError(f"TaskSpec.family must be one of {FAMILIES} (or empty), got {self.family!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TaskSpec:
        """The spec from :meth:`to_dict`'s mapping; ``ValueError`` naming what is missing or unknown."""
        if not isinstance(d, dict):
            raise ValueError(f"a task spec must be a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in ("view_side", "obs_side") if k not in d]
        unknown = sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"task spec: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}: {d!r}")
        return cls(**d)


def tool_config_for(source: Any) -> tools.ToolConfig:
    """The zoom tool's pixel budgets a task was designed for.

    ``source`` is a :class:`~mapo.data.Sample` (its ``task``), a :class:`TaskSpec`,
    or a :class:`~mapo.data.synth.SynthConfig` (anything with ``view_side`` and
    ``obs_side``). A sample without a task spec, or ``None``, gets
    :data:`mapo.agent.tools.DEFAULT_TOOL_CONFIG`.
    """
    from mapo.data.sample import Sample

    if isinstance(source, Sample):
        source = source.task
    if source is None:
        return tools.DEFAULT_TOOL_CONFIG
    view, obs = source.view_side**2, source.obs_side**2
    return tools.ToolConfig(view_min_pixels=view, view_max_pixels=view, obs_min_pixels=obs, obs_max_pixels=obs)
