"""Ctrl-C during training: finish the step, write a checkpoint, say how to resume.

:class:`StopOnInterrupt` turns the first SIGINT into a request the training loop reads
between steps (:meth:`StopOnInterrupt.requested`; under torchrun the ranks agree on it,
so they stop after the same step); the loop then checkpoints and raises
:class:`TrainingInterrupted`, whose message is the resume command. A second Ctrl-C
stops at once, as Python does by default (the checkpoint written last is complete:
checkpoints are written atomically).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after ``step`` with a checkpoint; ``str(e)`` says how to resume."""

    def __init__(self, run_dir: str | Path, step: int, steps: int, command: str):
        self.run_dir, self.step, self.steps, self.command = Path(run_dir), step, steps, command
        super().__init__(f"interrupted after step {step} of {steps}; checkpoint written in {self.run_dir}/checkpoints. "
                         f"Resume with: {command}")


class StopOnInterrupt:
    """Context manager: while inside, the first SIGINT only sets a flag (the main thread's handler)."""

    def __init__(self, what: str = "mapo train"):
        self.what = what
        self._flag = False
        self._previous = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self._flag = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        print(f"\n{self.what}: Ctrl-C: finishing this step, then writing a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def requested(self, distributed: bool = False) -> bool:
        """Whether a stop was asked for; with ``distributed``, on any rank (every rank must call this)."""
        if not distributed:
            return self._flag
        t = torch.tensor([float(self._flag)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def resume_command(run_dir: str | Path, world_size: int = 1, command: str = "train") -> str:
    """The command line that resumes ``run_dir`` (under torchrun with ``world_size`` > 1)."""
    launcher = f"torchrun --nproc-per-node {world_size} -m mapo" if world_size > 1 else "mapo"
    return f"{launcher} {command} --resume {run_dir}"


__all__ = ["StopOnInterrupt", "TrainingInterrupted", "resume_command"]
