"""The agent protocol: prompts, the tag grammar, the parser of model output, observations.

One assistant turn is free text containing tagged blocks::

    <description>what the last view shows</description>   (required after an observation)
    <think>reasoning</think>
    <tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2], "label": "..."}}</tool_call>
      or
    <answer>B</answer>

An observation (the tool's result) is a ``user`` (or ``tool``) message
``<tool_response><image></tool_response>`` followed by a short instruction to
describe the view first. A rejected call gets a text-only
``<tool_response>Error: ...</tool_response>``.

:func:`parse_turn` never raises: every problem becomes an entry in
``Turn.errors`` of the form ``"<code>: <sentence>"`` (codes listed in
:data:`ERROR_CODES`), and whatever can be extracted is extracted. A tool call
becomes ``ToolCall(name, args)`` with the typed arguments of the tool the registry
(:mod:`mapo.agent.tools`) knows by that name; zoom-in is always offered, further tools
when :attr:`ProtocolConfig.extra_tools` names them.

Modules: :mod:`~mapo.agent.protocol.config` (the settings and error codes),
:mod:`~mapo.agent.protocol.parse` (:func:`parse_turn`), :mod:`~mapo.agent.protocol.render`
(prompts, observations, rendered turns).

Where we depart from or guess at the paper (arXiv 2604.06777): the paper's exact
tag syntax is not public. We use DeepEyes' ``<think>``/``<tool_call>``/``<answer>``
grammar and JSON schema, and add MAPO's mandated description as a
``<description>`` block that opens every turn following an observation. All tag
names, the tool name and the texts are config values. The description length
limit (:attr:`ProtocolConfig.max_description_chars`) is our guard against
verifier hacking; the parser flags, the reward/verifier penalises.
"""

from mapo.agent.protocol.config import (
    DEFAULT_ANSWER_INSTRUCTION,
    DEFAULT_CONFIG,
    DEFAULT_OBSERVATION_INSTRUCTION,
    DEFAULT_SYSTEM_TEMPLATE,
    ERROR_CODES,
    MAX_ERRORS,
    ProtocolConfig,
    enabled_tools,
)
from mapo.agent.protocol.parse import Turn, parse_turn
from mapo.agent.protocol.render import (
    initial_messages,
    note_to_stderr,
    observation_message,
    option_letters,
    protocol_for_policy,
    render_assistant_turn,
    render_call,
    render_tool_call,
    system_prompt,
    user_prompt,
)

__all__ = [
    "DEFAULT_ANSWER_INSTRUCTION",
    "DEFAULT_CONFIG",
    "DEFAULT_OBSERVATION_INSTRUCTION",
    "DEFAULT_SYSTEM_TEMPLATE",
    "ERROR_CODES",
    "MAX_ERRORS",
    "ProtocolConfig",
    "Turn",
    "enabled_tools",
    "initial_messages",
    "note_to_stderr",
    "observation_message",
    "protocol_for_policy",
    "option_letters",
    "parse_turn",
    "render_assistant_turn",
    "render_call",
    "render_tool_call",
    "system_prompt",
    "user_prompt",
]
