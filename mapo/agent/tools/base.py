"""The tool interface: what a tool declares, what a parsed call holds, what a run returns.

A tool is one object with a registry name. The parser (:func:`mapo.agent.protocol.parse_turn`)
reads a call's JSON ``arguments`` with :meth:`Tool.read_args` into the tool's typed
arguments; :func:`mapo.agent.tools.run_tool` runs them with :meth:`Tool.run` on the
*original* image; records store :meth:`Tool.args_json`; the system prompt shows
:meth:`Tool.describe` and a call is written with :meth:`Tool.render_arguments`.

Errors the model can read are sentences prefixed ``tool_call_schema:`` (the
protocol's error code); a run that cannot use valid-looking arguments (a box
outside the image) returns a :class:`ToolResult` with ``error`` set instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from PIL import Image

from mapo.agent.tools.geometry import Box, ToolConfig



class CallSyntax(Protocol):
    """What a tool reads of the protocol to name and describe its calls.

    :class:`mapo.agent.protocol.ProtocolConfig` has these fields. The tools name
    this shape instead of importing the protocol, which imports the tools.
    """

    tool_name: str  # the zoom-in tool's name in calls
    tool_call_tag: str  # the tag around a call, e.g. ``tool_call``


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call.

    ``name`` is the tool name as the model wrote it (``""`` when unreadable);
    ``args`` the tool's typed arguments when the call can run, else ``None``
    (unknown tool, bad arguments); ``raw`` the text inside the tags;
    ``arguments`` the decoded JSON ``arguments`` value (``None`` when it is not
    an object); ``error`` the first ``tool_call_*`` error of the turn when
    ``args`` is ``None`` (what the error observation says).
    """

    name: str
    args: Any | None
    raw: str
    arguments: dict[str, Any] | None = None
    error: str | None = None

    @property
    def bbox(self) -> Box | None:
        """The zoom-in box ``(x1, y1, x2, y2)`` in view pixels as the model wrote it; None for other tools."""
        return getattr(self.args, "bbox", None)

    @property
    def label(self) -> str | None:
        """The call's ``label`` argument (what the model expects to see), whatever the tool; None unless a string.

        Kept even when the call cannot run, so records show what the model meant;
        ``semantic_target=label`` scores it.
        """
        label = self.arguments.get("label") if self.arguments is not None else None
        return label if isinstance(label, str) else None


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one call: an observation image, or an error sentence for the model.

    ``box_view``/``box_original`` are the image region the observation shows, in view
    and original pixels, for tools that select one (zoom-in); None otherwise.
    """

    tool: str  # registry name; "" when the call could not be read
    image: Image.Image | None
    error: str | None
    box_view: Box | None = None
    box_original: Box | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Tool:
    """One tool the agent can call. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # registry name, and the name the model writes unless call_name says otherwise
    required: ClassVar[tuple[str, ...]]  # arguments a call must give (named in the "not an object" error)
    args_type: ClassVar[type]  # the typed arguments read_args returns

    def call_name(self, protocol: CallSyntax) -> str:
        """The name the model writes in ``{"name": ...}``."""
        return self.name

    def read_args(self, arguments: dict[str, Any], errors: list[str]) -> Any | None:
        """Typed arguments from the JSON object, or None when the call cannot run.

        Appends one ``"tool_call_schema: ..."`` sentence per problem to ``errors``,
        including problems that still let the call run (an extra argument).
        """
        raise NotImplementedError

    def run(self, args: Any, image: Image.Image, view_wh: tuple[int, int] | None, config: ToolConfig) -> ToolResult:
        """Run on the original ``image`` seen by the model at ``view_wh`` (None: :func:`view_size`)."""
        raise NotImplementedError

    def args_json(self, args: Any) -> dict[str, Any]:
        """The arguments as plain JSON data, as records store them."""
        raise NotImplementedError

    def render_arguments(self, args: Any) -> str:
        """The JSON text of ``arguments`` in a written call (SFT targets, oracles)."""
        raise NotImplementedError

    def describe(self, call_name: str, protocol: CallSyntax) -> str:
        """This tool's section of the system prompt."""
        raise NotImplementedError


def cut(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters: a 400-digit number need not be echoed to the model in full."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    return cut(repr(value), limit)
