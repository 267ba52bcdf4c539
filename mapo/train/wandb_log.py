"""Optional Weights & Biases mirror of ``metrics.jsonl`` (TensorBoard stays the default).

mapo does not depend on ``wandb``: a run that sets ``wandb: PROJECT`` needs the package
installed, and says so clearly when it is not. ``WANDB_MODE=offline`` logs without a
network (sync later with ``wandb sync``). The W&B run is named after the run directory
and resumes with it (its id is the directory's name plus a hash of its absolute path).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def start_wandb(project: str, run_dir: str | Path, config: dict[str, Any] | None = None) -> Any:
    """A ``wandb`` run for ``run_dir`` in ``project`` (resumed if it exists); ValueError without the package."""
    try:
        import wandb
    except ImportError:
        raise ValueError(
            f"wandb={project!r} is set but the wandb package is not installed: pip install wandb "
            "(or leave wandb unset; metrics.jsonl and TensorBoard are written either way)"
        ) from None
    run_dir = Path(run_dir).resolve()
    run_id = f"{run_dir.name}-{hashlib.sha1(str(run_dir).encode('utf-8')).hexdigest()[:8]}"
    return wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                      config=config or {})
