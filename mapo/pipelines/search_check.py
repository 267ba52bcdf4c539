"""The demo's search check: where the zoom location matters, how often each listed policy looks in the right place.

The RL stage's level may be one where every zoom hits (``pattern``: one object per
image). The check writes a test set of a level where the asked object sits among
others (``search.level``, cached like the other data stages), evaluates each policy of
``search.policies`` on it greedily with the RL stage's budgets, and returns one row per
policy: accuracy, first-zoom hit rate and found rate. Nothing is trained or chosen here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# metrics.json "tools" keys shown per policy, with their column titles
SEARCH_COLUMNS = {
    "accuracy": "accuracy",
    "first_crop_hit_rate": "first-zoom hit",
    "found_rate": "found rate",
    "tool_calls_per_sample": "zooms / sample",
}


def _policy_dir(name: str) -> Path:
    """The checkpoint a policy name means; a shipped one is checked against its manifest first."""
    from mapo.core.shipped import SHIPPED_PREFIX
    from mapo.policy import default, missing_files

    try:
        path = default.resolve_policy_dir(name)  # the one resolver of shipped names
    except ValueError as e:
        raise ValueError(f"search.policies: {e}") from None
    if name == "default" or name.startswith(SHIPPED_PREFIX):
        if not path.is_dir():
            raise ValueError(f"search.policies: no shipped checkpoint {name!r}")
        default.verify(path)  # an altered checkpoint is an error, not a silent fallback
        return path
    missing = missing_files(path) if path.is_dir() else ["the directory itself"]
    if missing:
        raise ValueError(f"search.policies: {name!r} is not a policy checkpoint directory: missing {', '.join(missing)}")
    return path


def _folder_name(name: str) -> str:
    """A folder name for a policy's evaluation (``shipped:warmstart_search`` -> ``shipped_warmstart_search``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "policy"


def search_check_stage(
    cfg: Any,
    verifier: Path,
    eval_config: Any,
    out: Path,
    synth_set: Callable[[dict[str, Any], str], tuple[Path, bool]],
    evaluate: Callable[..., dict[str, Any]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate ``cfg.search.policies`` on the check's test set; returns ``{"set": {...}, "rows": [...]}``.

    Args:
        cfg: the :class:`~mapo.pipelines.demo_config.PipelineConfig`.
        verifier: the pipeline's verifier directory (semantic scores in each evaluation).
        eval_config: the greedy evaluation config of the RL stage (same budgets as the main table).
        out: where the evaluations go (``out/<policy>/``; a finished one is read back).
        synth_set: ``(spec, name) -> (folder, reused)``, the pipeline's cached data stage.
        evaluate: ``(policy_dir, data, verifier, out, config) -> metrics``, the pipeline's evaluation stage.
    """
    check = cfg.search
    data, _ = synth_set(check.spec(), "search")
    rows = []
    for name in check.policies:
        path = _policy_dir(name)
        log(f"search check: {name} on {check.n} {check.level} samples")
        metrics = evaluate(path, data, verifier, out / _folder_name(name), eval_config)
        tools = metrics.get("tools", {})
        rows.append({"policy": name, "path": str(path), "eval": str(out / _folder_name(name)),
                     **{key: tools.get(key) for key in SEARCH_COLUMNS}})
    return {"set": {"level": check.level, "n": check.n, "seed": check.seed, "data": str(data)}, "rows": rows}


def search_markdown(search: dict[str, Any]) -> list[str]:
    """The summary's section: one row per policy (a list of markdown lines)."""
    info = search["set"]
    lines = [f"## Where to look: `{info['level']}` test set ({info['n']} samples, seed {info['seed']}): "
             f"`{info['data']}`", "",
             "The asked object sits among others here, so the first zoom must pick it out. Evaluation only: "
             "these policies are not trained by this run.", "",
             "| policy | " + " | ".join(SEARCH_COLUMNS.values()) + " |", "|---" * (len(SEARCH_COLUMNS) + 1) + "|"]
    for row in search["rows"]:
        cells = ["n/a" if row[k] is None else f"{row[k]:.3f}" for k in SEARCH_COLUMNS]
        lines.append(f"| `{row['policy']}` | " + " | ".join(cells) + " |")
    return lines


__all__ = ["SEARCH_COLUMNS", "search_check_stage", "search_markdown"]
