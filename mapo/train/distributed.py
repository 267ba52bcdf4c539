"""Data-parallel ``mapo train``: ``torchrun --nproc-per-node N -m mapo train ...``.

The contract (what a data-parallel step means in mapo; docs/scale_out.md):

- **Groups never span ranks.** Prompts are sharded, not trajectories: rank ``r``
  owns prompts ``[r * P/W, (r + 1) * P/W)`` of the step and rolls out all ``G``
  samples of each, so every group's statistics (GRPO mean/std, the semantic
  ``mu_s``/``sigma_s``) are computed on one rank and equal the single-process ones;
  nothing about advantages is all-reduced. :func:`check_batch_split` refuses, before
  any rendezvous, a prompt count that ``W`` does not divide.
- **Same samples as one process.** Every episode samples from its own generator
  keyed by (seed, step, prompt index within the step, member) (``mapo.train.rl``),
  so a rank draws exactly what a single process would for the same prompts.
- **One loss for the whole batch.** Each rank aggregates its tokens with
  :func:`mapo.algo.loss.agg_loss` over the *global* count (:func:`global_denominator`)
  and the gradients are *summed* over ranks, so the update is the single-process
  update for every ``agg_loss`` mode (invariant to W).
- **torch's DDP moves the gradients.** :func:`wrap_for_training` wraps the training
  forward (:class:`LogprobForward`: the log-prob forward of
  :func:`mapo.engine.trajectory.sequence_logprobs`) in ``DistributedDataParallel``, whose
  bucketed all-reduce overlaps the backward pass; a communication hook makes it a sum
  instead of DDP's mean. Gradient accumulation runs the micro-batches of a mini-batch
  under ``no_sync`` and synchronises on the last one. With ``minibatches > 1`` a rank may
  hold any number of a mini-batch's rows (zero included), while DDP needs every rank to
  run the same number of synchronised backward passes: :func:`micro_steps` makes every
  rank run the largest count, a rank with fewer running a forward of one of its rows
  with the loss multiplied by 0 (zeros for the sum, the same collectives). The bootstrap's
  per-trajectory gradients (``torch.autograd.grad``) bypass the wrapper. Beyond a node,
  or to shard the weights, use verl (docs/scale_out.md).
- **Rank 0 writes.** Metrics, checkpoints, the final policy and the summary are
  written by rank 0 only (:attr:`DistInfo.is_main`); :func:`run_on_main` runs a
  rank-0-only step and re-raises its ``ValueError`` on every rank, so a refused
  start stops all ranks instead of leaving them waiting.
- Backend: ``gloo`` on CPU, ``nccl`` on CUDA (:func:`init_distributed`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` in ``[0, world_size)``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info_from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Read torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (single process when unset)."""
    env = os.environ if env is None else env
    values = {}
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        raw = env.get(key, default)
        try:
            values[key] = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {key} must be an integer (set by torchrun), got {raw!r}") from None
    info = DistInfo(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])
    if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={info.rank}, WORLD_SIZE={info.world_size}, LOCAL_RANK={info.local_rank}")
    return info


def init_distributed(device: torch.device | str = "cpu", info: DistInfo | None = None) -> DistInfo:
    """Join the process group (gloo on CPU, nccl on CUDA) when launched with more than one rank.

    Rendezvous uses torchrun's ``MASTER_ADDR``/``MASTER_PORT`` (``env://``).
    """
    info = dist_info_from_env() if info is None else info
    if not info.distributed:
        return info
    if dist.is_initialized():  # the caller joined already: it must be this job
        if (dist.get_rank(), dist.get_world_size()) != (info.rank, info.world_size):
            raise ValueError(
                f"the process group is rank {dist.get_rank()} of {dist.get_world_size()}, but the environment says "
                f"RANK={info.rank}, WORLD_SIZE={info.world_size}"
            )
        return info
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def check_batch_split(prompts_per_step: int, group_size: int, world_size: int) -> int:
    """Prompts per rank; raises ValueError saying what to change when ``world_size`` does not divide them."""
    for name, value in (("prompts_per_step", prompts_per_step), ("group_size", group_size), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if prompts_per_step % world_size:
        below = prompts_per_step - prompts_per_step % world_size  # the nearest multiples of world_size
        below, above = (below, below + world_size) if below else (world_size, 2 * world_size)
        raise ValueError(
            f"{prompts_per_step} prompts per step cannot be split over {world_size} ranks without splitting a group "
            f"across ranks (each rank rolls out all {group_size} samples of its prompts): set prompts_per_step to a "
            f"multiple of {world_size} (e.g. {below} or {above}), or launch with a --nproc-per-node that divides "
            f"{prompts_per_step}"
        )
    return prompts_per_step // world_size


def rank_span(total: int, info: DistInfo) -> tuple[int, int]:
    """``(first, count)`` of this rank's contiguous share of ``total`` items (the step's prompts).

    Raises ValueError when the ranks cannot share them evenly (see :func:`check_batch_split`).
    """
    count = total // info.world_size
    if count * info.world_size != total:
        raise ValueError(f"{total} items cannot be split evenly over {info.world_size} ranks")
    return info.rank * count, count


def global_denominator(local_count: float, info: DistInfo) -> float:
    """The sum over ranks of ``local_count`` (tokens or sequences in the loss)."""
    if not info.distributed:
        return float(local_count)
    t = torch.tensor([float(local_count)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def _comm_device() -> torch.device:
    """Where tensors must be to travel: the current GPU with nccl, the CPU with gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class LogprobForward(torch.nn.Module):
    """The training forward as a module (what DDP wraps): ``forward(batch, temperature=, return_entropy=)`` is
    :func:`mapo.engine.trajectory.sequence_logprobs` of ``model``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any, temperature: float = 1.0, return_entropy: bool = False):
        from mapo.engine.trajectory import sequence_logprobs

        return sequence_logprobs(self.model, batch, temperature=temperature, return_entropy=return_entropy)


def _sum_hook(state, bucket):  # no annotations: DDP checks them against its own types
    """DDP communication hook: sum the bucket (a ``dist.GradBucket``) over ranks (DDP's own hook averages)."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap_for_training(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``module`` itself in one process; under torchrun ``DistributedDataParallel(module)`` summing gradients.

    DDP broadcasts rank 0's parameters and buffers at construction, so replicas start
    identical whatever each rank loaded. Parameters that do not require grad (a LoRA
    base, a frozen vision tower) take no part in the all-reduce.
    """
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: a trainable weight that a forward does not reach (a layer a model skips) must not
    # leave its bucket waiting; unused on every rank, its grad stays None, as in one process.
    ddp = DistributedDataParallel(module, device_ids=None, forward_sync_buffers=False, find_unused_parameters=True)
    ddp.register_comm_hook(state=None, hook=_sum_hook)
    return ddp


def micro_steps(trainer: torch.nn.Module, micro_batches: Sequence[T], padding: T, info: DistInfo):
    """Yield ``(micro_batch, real)`` for gradient accumulation; run its forward and backward in the loop body.

    Every rank gets the same number of steps (the largest count over ranks): the missing
    ones yield ``(padding, False)``, whose loss the caller multiplies by 0. Under DDP every
    step but the last runs under ``no_sync`` (gradients accumulate locally); the last one's
    backward sums them over ranks.
    """
    count = len(micro_batches)
    if info.distributed:
        t = torch.tensor([count], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        count = int(t.item())
    for i in range(count):
        local = nullcontext() if i == count - 1 or not hasattr(trainer, "no_sync") else trainer.no_sync()
        with local:
            yield (micro_batches[i], True) if i < len(micro_batches) else (padding, False)


def sum_over_ranks(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """Each value summed over ranks (every rank passes the same keys); float64."""
    if not info.distributed:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def mean_metrics(
    metrics: Mapping[str, float], weight: float, info: DistInfo, summed: Sequence[str] = ()
) -> dict[str, float]:
    """``weight``-weighted mean of each metric over the ranks that report it (weight = the rank's trajectories).

    Ranks may report different keys (a rank whose trajectories made no observation has no
    ``semantic_mean``): a key is averaged over the ranks that have it. Keys in ``summed``
    (counts, e.g. ``verifier_pairs``) are summed instead.
    """
    if not info.distributed:
        return dict(metrics)
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, (dict(metrics), float(weight)))
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for rank_metrics, w in gathered:
        for k, v in rank_metrics.items():
            w_k = 1.0 if k in summed else w
            sums[k] = sums.get(k, 0.0) + float(v) * w_k
            weights[k] = weights.get(k, 0.0) + w_k
    return {k: sums[k] if k in summed else (sums[k] / weights[k] if weights[k] else 0.0) for k in sorted(sums)}


def gather_concat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate along dim 0, in rank order, one same-shaped tensor per rank (e.g. per-trajectory values)."""
    if not info.distributed:
        return t
    local = t.to(_comm_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(t.device)


def run_on_main(fn: Callable[[], T], info: DistInfo) -> T | None:
    """Call ``fn`` on rank 0 only; a ``ValueError`` it raises is raised on every rank.

    For rank-0-only steps that can refuse a start (creating the run directory): without
    this, rank 0 would stop with its message and the others would wait for it forever.
    Returns ``fn()``'s result on rank 0, None elsewhere.
    """
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except ValueError as e:
            error = e
    if info.distributed:
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            raise ValueError(box[0])
    if error is not None:
        raise error
    return result


def broadcast_object(value: T, info: DistInfo) -> T:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not info.distributed:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class NullLogger:
    """What ranks other than 0 log to: nothing (same methods as ``MetricsLogger``)."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistInfo",
    "NullLogger",
    "LogprobForward",
    "barrier",
    "broadcast_object",
    "check_batch_split",
    "cleanup",
    "dist_info_from_env",
    "gather_concat",
    "global_denominator",
    "init_distributed",
    "mean_metrics",
    "micro_steps",
    "run_on_main",
    "rank_span",
    "sum_over_ranks",
    "wrap_for_training",
]
