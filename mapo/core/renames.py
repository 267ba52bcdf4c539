"""Names that changed, kept in one place so files written under the old names still read.

- :data:`METRICS`: logged metric names, old -> current. :func:`current_metric_names`
  renames the keys of one ``metrics.jsonl`` row; ``mapo.train.metrics_log.read_metrics``
  applies it to every row it reads, so old runs plot, compare and resume as new ones.
- :data:`EVAL_CONFIG_KEYS`: ``mapo eval`` config keys, old -> current; the config
  loader reads a file or override under the old name as the new one
  (``mapo.core.config.renamed_to_current``).

Pure Python, so a script can read old outputs without torch.
"""

from __future__ import annotations

from typing import Any

# The share of tool calls that were rejected or unreadable had three names; it has one now.
METRICS = {"invalid_box_rate": "invalid_call_rate", "invalid_tool_call_rate": "invalid_call_rate"}
# RL and eval name "use the pixel budgets the generated samples were made for" alike.
EVAL_CONFIG_KEYS = {"tool_from_samples": "tool_from_data"}


def current_metric_names(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each metric logged under an old name under its current one (matched on the last ``/`` part)."""
    out = {}
    for key, value in row.items():
        prefix, slash, name = key.rpartition("/")
        out[prefix + slash + METRICS.get(name, name)] = value
    return out
