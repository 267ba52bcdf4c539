"""The state of one ``mapo train`` run and the chores around it: device, starting policy, skipped rows, checkpoints.

:class:`Run` is everything the RL loop touches; :func:`mapo.train.rl.setup` builds it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mapo.engine.rollout import RolloutConfig
from mapo.train import distributed as dp
from mapo.train.metrics_log import MetricsLogger
from mapo.train.checkpoint import save_checkpoint
from mapo.train.rl_data import Data


@dataclass
class Run:
    """Everything the loop touches."""

    cfg: Any  # mapo.train.rl.RLConfig
    run_dir: Path
    device: torch.device
    data: Data
    policy: Any  # mapo.policy.Policy being trained
    reference: Any  # frozen starting policy (KL), or None
    verifier: Any  # mapo.verifier Verifier, or None
    rollout_cfg: RolloutConfig  # cfg.rollout with the data's tool budgets
    optimizer: torch.optim.Optimizer
    scheduler: Any
    logger: MetricsLogger | dp.NullLogger  # NullLogger on ranks other than 0
    step: int = 0
    skipped_updates: int = 0
    last_eval: dict = dataclasses.field(default_factory=dict)
    dist: dp.DistInfo = dataclasses.field(default_factory=dp.DistInfo)  # this rank (single process: rank 0 of 1)
    reported: set = dataclasses.field(default_factory=set)  # ids of skipped samples already reported
    schedule_steps: int = 0  # horizon of the learning-rate schedule: the steps the run started with
    trainer: Any = None  # the training forward (dp.LogprobForward of policy.model; DDP-wrapped under torchrun)


SKIPPED_FILE = "skipped_rows.jsonl"  # one {"file", "row", "id", "reason"} per training sample that cannot be played


def skipped_ids(path: Path) -> list[str]:
    """Ids already in ``RUN_DIR/skipped_rows.jsonl`` (a resumed run does not report them again)."""
    if not path.is_file():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ids.append(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash: that row is reported again, which is harmless
    return ids


def report_skipped(run: Run) -> None:
    """Say on stderr which samples were newly skipped; rank 0 appends them to ``RUN_DIR/skipped_rows.jsonl``."""
    new = [row for sample_id, row in run.data.skipped.items() if sample_id not in run.reported]
    if not new:
        return
    for row in new:
        run.reported.add(row["id"])
        print(f"mapo train: skipped {row['file']} [row {row['row']}]: {row['reason']}", file=sys.stderr)
    if run.dist.is_main:
        with (run.run_dir / SKIPPED_FILE).open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in new)


def save(run: Run) -> None:
    """Checkpoint the run at ``run.step`` (model, optimizer, scheduler, data cursor, skipped updates)."""
    save_checkpoint(
        run.run_dir, run.step, save_model=run.policy.save, optimizer=run.optimizer, scheduler=run.scheduler,
        state={"cursor": run.step * run.cfg.prompts_per_step, "skipped_updates": run.skipped_updates,
               "schedule_steps": run.schedule_steps or run.cfg.steps},
        keep_last=run.cfg.keep_last,
    )


__all__ = ["SKIPPED_FILE", "Run", "report_skipped", "save", "skipped_ids"]
