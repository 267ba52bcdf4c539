"""The optimiser every recipe uses: AdamW with a linear warm-up and cosine decay, and gradient clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from mapo.core.config import knob


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup and a decay schedule, and gradient clipping."""

    lr: float = knob(1e-3, "peak learning rate")
    weight_decay: float = knob(0.01, "AdamW weight decay (matrices only; not norms, biases)")
    betas: tuple[float, float] = knob((0.9, 0.95), "AdamW betas")
    eps: float = knob(1e-8, "AdamW epsilon")
    schedule: Literal["cosine", "linear", "constant"] = knob("cosine", "decay after warmup: cosine, linear or constant")
    warmup_frac: float = knob(0.05, "fraction of the steps spent warming up linearly from 0")
    min_lr_ratio: float = knob(0.1, "final learning rate as a fraction of lr (cosine / linear)")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = off)")

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay only on matrices (not norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warmup, then the decay schedule."""
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """``LambdaLR`` following :func:`lr_factor` (its state_dict is just the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (``max_norm`` 0 = no clipping); return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)
