"""Layer 1, the agent: the rules of one episode in pure Python (no torch).

:mod:`~mapo.agent.tools` (the tool registry: zoom-in, rotate; coordinates),
:mod:`~mapo.agent.protocol` (prompts, tags, the parser of a turn) and
:mod:`~mapo.agent.episode` (one episode's turns, tool calls and their records).
Both the local rollout and the verl agent loop play episodes through these.
"""
