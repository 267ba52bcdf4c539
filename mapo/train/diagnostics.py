"""What the RL trainer measures beyond the trajectories: advantage statistics and gradient-variance estimates.

Trajectory metrics (reward, accuracy, tool use, crop IoU, first-zoom hit) live in
:mod:`mapo.metrics.heldout`, shared with the held-out evaluations, ``mapo eval`` and the report;
semantic scores in :mod:`mapo.algo.semantic` (shared with eval, the report and verl).

Every function here is pure given its inputs (no trainer state), so the trainer
and the tests call the same code. Formulas of every
metric: ``docs/metrics.md``.

Gradient variance (docs/algorithm.md: the claim that the semantic term lowers it, made measurable): the
bootstrap of :func:`bootstrap_variance` over per-trajectory projections
``p_i = ∇l_i · v`` of the policy gradient on one fixed, seeded random unit
direction ``v`` (the same for every algorithm so that numbers compare). The
projections are exact (:func:`projected_gradient`, one backward per
trajectory, about the cost of one more forward+backward of the batch) rather
than the central finite differences first planned, which float32 roundoff
made 2% wrong on the tiny policy. Where we guess: the paper does not say how
it measured gradient variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


# ----------------------------------------------------------------------------- tool tokens and advantages


def tool_segment_mask(trajectories: Sequence[Any], segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: tokens of assistant segments whose tool call produced an observation.

    Segment ``j`` made the call of observation ``k = j + 1``, so segments ``0 .. K_i - 1`` of
    trajectory ``i`` are its tool-call segments. ``segment_ids`` is (B, T), -1 outside the loss.
    """
    n_obs = torch.tensor([t.num_observations for t in trajectories], dtype=segment_ids.dtype)  # (B,)
    return (segment_ids >= 0) & (segment_ids < n_obs[:, None])


def advantage_metrics(advantages: torch.Tensor, mask: torch.Tensor, tool_mask: torch.Tensor) -> dict[str, float]:
    """``adv_mean``, ``adv_var``, ``adv_nonzero_frac`` over loss tokens and ``adv_var_tool_tokens`` over tool-call segments.

    Args:
        advantages: (B, T) float. mask: (B, T) bool loss tokens. tool_mask: (B, T) bool (a subset).
    Variances are population variances over tokens; ``adv_var_tool_tokens`` is 0 without tool tokens.
    """
    a = advantages.detach().double()
    on, tool = a[mask.bool()], a[tool_mask.bool()]
    return {
        "adv_nonzero_frac": float((on.abs() > 1e-8).double().mean()) if on.numel() else 0.0,
        "adv_mean": float(on.mean()) if on.numel() else 0.0,
        "adv_var": float(on.var(unbiased=False)) if on.numel() else 0.0,
        "adv_var_tool_tokens": float(tool.var(unbiased=False)) if tool.numel() else 0.0,
        "tool_token_frac": tool.numel() / max(on.numel(), 1),
    }


def group_signal_metrics(outcome: torch.Tensor, group: torch.Tensor) -> dict[str, float]:
    """``zero_var_group_frac``: the share of groups whose outcome rewards are all equal (no GRPO signal).

    Args:
        outcome: (B,) float outcome rewards R_i. group: (B,) long prompt ids.
    """
    groups = group.unique()
    flat = [bool((outcome[group == g] - outcome[group == g][0]).abs().max() < 1e-8) for g in groups]
    return {"zero_var_group_frac": float(np.mean(flat)) if flat else 0.0}


# ----------------------------------------------------------------------------- gradient variance


def random_direction(params: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """A unit vector ``v`` over ``params`` (list of tensors shaped like them), seeded on the CPU.

    Drawn on the CPU in parameter order so the same seed gives the same ``v`` on any device.
    """
    gen = torch.Generator().manual_seed(int(seed))
    parts = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in parts))
    return [(x / norm).to(device=p.device, dtype=p.dtype) for x, p in zip(parts, params)]


def projected_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]) -> float:
    """``∇loss · v``, exactly, from one backward pass (``torch.autograd.grad``: ``.grad`` is untouched).

    Args:
        loss: a scalar that depends on ``params``.
        params: parameters ``θ`` (those that require grad).
        direction: ``v``, tensors shaped like ``params``.
    """
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    total = torch.zeros((), dtype=torch.float64, device=loss.device)
    for g, v in zip(grads, direction):
        if g is not None:
            total = total + (g.double() * v.double()).sum()
    return float(total)


def bootstrap_variance(
    values: torch.Tensor, group: torch.Tensor, *, n_resamples: int, generator: torch.Generator
) -> float:
    """Bootstrap variance of ``sum_i values_i`` when whole groups are resampled with replacement.

    With ``q_g = sum_{i in g} values_i`` over the ``n_g`` groups, replicate ``m`` draws
    ``n_g`` groups ``g*_{m,1..n_g}`` with replacement and takes ``d*_m = sum_b q_{g*_{m,b}}``;
    the result is the unbiased variance of ``d*_1..d*_M``. Groups, not trajectories, are
    resampled because advantages couple the members of a group.

    Args:
        values: (B,) per-trajectory directional derivatives ``p_i``.
        group: (B,) int prompt id.
        n_resamples: ``M`` >= 2.
        generator: CPU generator of the resampling.
    """
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    if values.dim() != 1 or group.shape != values.shape:
        raise ValueError(f"values and group must both be (B,), got {tuple(values.shape)} and {tuple(group.shape)}")
    _, inverse = torch.unique(group.cpu(), return_inverse=True)
    n_groups = int(inverse.max()) + 1
    q = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, values.detach().cpu().double())  # (n_g,)
    draws = torch.randint(0, n_groups, (n_resamples, n_groups), generator=generator)  # (M, n_g)
    replicates = q[draws].sum(dim=1)  # (M,)
    return float(replicates.var(unbiased=True))
