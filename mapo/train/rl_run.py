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
from mapo.train.common import MetricsLogger, save_checkpoint
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


def resolve_device(name: str, info: dp.DistInfo | None = None) -> torch.device:
    """The run's device; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    info = dp.DistInfo() if info is None else info
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:  # the CPU build of torch that `make setup` installs by default
            raise ValueError(f"device {name!r} asked for, but this torch ({torch.__version__}) is a CPU build: install "
                             "the CUDA build with `make setup GPU=cu128` (README, \"GPU\"), or use device: cpu")
        raise ValueError(f"device {name!r} asked for, but torch {torch.__version__} sees no GPU (driver, "
                         "CUDA_VISIBLE_DEVICES?); or use device: cpu")
    if device.type == "cuda" and info.distributed:
        if device.index is not None:
            raise ValueError(f"device {name!r} names one GPU, but under torchrun each rank uses cuda:LOCAL_RANK: "
                             "set device: cuda (or auto)")
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {info.local_rank} has no GPU ({torch.cuda.device_count()} visible): launch "
                             f"at most {torch.cuda.device_count()} processes per node")
        device = torch.device("cuda", info.local_rank)
    return device


def check_policy_path(policy: str) -> None:
    """Fail at start, naming what is wrong, unless ``policy`` is 'default' or a loadable checkpoint directory."""
    from mapo.policy import missing_files

    if policy == "default":
        import mapo.policy

        if not hasattr(mapo.policy, "load_default"):
            raise ValueError("policy: 'default' needs a shipped warm start, which this version lacks; give a checkpoint "
                             "directory (e.g. runs/sft/final from `mapo sft`)")
        return
    from mapo.policy.default import resolve_policy_dir

    path = resolve_policy_dir(policy)  # shipped:NAME and mapo/assets/NAME mean the shipped checkpoint
    if not path.is_dir():
        raise ValueError(f"policy {policy!r} is not a directory (expected a local checkpoint, e.g. runs/sft/final)")
    missing = missing_files(path)
    if missing:
        raise ValueError(f"policy {policy!r} is not a policy checkpoint directory: missing {', '.join(missing)}")


def load_start_policy(cfg: Any, device: torch.device, dtype: str | None = None):
    """The starting policy of ``cfg.policy`` ('default' or a checkpoint directory) on ``device``, in ``dtype``
    (default ``cfg.policy_dtype``; the shipped default is float32)."""
    if cfg.policy == "default":
        import mapo.policy

        policy = mapo.policy.load_default()
        policy.model.to(device)
        return policy
    from mapo.policy.default import load_named_policy

    return load_named_policy(cfg.policy, dtype=cfg.policy_dtype if dtype is None else dtype, device=device)


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


__all__ = ["SKIPPED_FILE", "Run", "check_policy_path", "load_start_policy", "report_skipped", "resolve_device", "save",
           "skipped_ids"]
