"""Metrics logging: one JSON line per logged step in ``RUN_DIR/metrics.jsonl``, mirrored to TensorBoard and W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mapo.core.renames import current_metric_names

from mapo.core.run_dir import atomic_write_text


class MetricsLogger:
    """Appends ``{"step": s, **scalars}`` to ``metrics.jsonl`` and mirrors scalars to TensorBoard
    and, with ``wandb=PROJECT`` (the package installed), to Weights & Biases.

    On resume from step ``s``, :meth:`truncate_after` drops lines logged after ``s``
    by the interrupted run, so a resumed run's file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb: str | None = None,
                 config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self._wandb = None  # optional mirror to a Weights & Biases project (mapo.train.wandb_log)
        if wandb:
            from mapo.train.wandb_log import start_wandb

            self._wandb = start_wandb(wandb, run_dir, config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        clean = {k: _as_float(k, v) for k, v in scalars.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [line for line in read_metrics(self.path) if line["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
    return float(value)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl``: JSON objects with an integer ``step``, metrics under their current names.

    Anything else (a partial last line from a crash, a line edited by hand that is not a
    record, bytes that are not UTF-8) is skipped. A file written before a metric was
    renamed reads as if written now (:func:`mapo.core.renames.current_metric_names`).
    """
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            records.append(current_metric_names(record))
    return records
