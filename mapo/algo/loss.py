"""Policy loss: clipped importance ratio, optional KL to a reference, entropy bonus, one aggregation.

All tensors are (B, T): ``B`` trajectories, ``T`` tokens; ``mask`` is 1 on tokens
inside the loss (assistant tokens; prompt, observation and padding tokens are 0).

Semantics follow verl (``compute_policy_loss_vanilla``, ``kl_penalty``, ``agg_loss``):

- ``ratio = exp(clamp(logp - old_logp, -20, 20))``;
- ``pg = max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))``;
- dual clip (Ye et al. 2020) for ``A < 0``: ``pg = min(pg, -A * dual_clip_c)``.
  Where we depart from verl: verl always applies the dual clip with ``c = 3``; here it
  is off unless ``dual_clip_c`` is set, which is the plain PPO objective of the design;
- ``loss = agg(pg) + kl_coef * agg(kl) - entropy_coef * agg(entropy)``, with verl's
  k1/k2/k3 KL estimators (k3 = ``exp(ref - logp) - (ref - logp) - 1``, log-ratio
  clamped to +-20 and the result to [-10, 10] as in verl's ``low_var_kl``).

The metric ``ppo_kl`` is verl's: the masked mean of ``old_logp - logp`` (the k1
estimate of KL(old || new) on the sampled tokens), not ``0.5 * (logp - old)^2``.
"""

from __future__ import annotations

import dataclasses

import torch

from mapo.core.config import knob

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_TYPES = ("k1", "k2", "k3")


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    denominator: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Aggregate a per-token loss into a scalar.

    Args:
        loss_mat: (B, T) float per-token loss.
        mask: (B, T) bool or {0, 1} float, 1 on tokens inside the loss.
        mode:
            ``"token-mean"``: ``sum(loss * mask) / N`` where N = number of loss tokens;
            ``"seq-mean-token-mean"``: mean over sequences of each sequence's token mean;
            ``"seq-mean-token-sum"``: mean over sequences of each sequence's token sum.
            For the two ``seq-mean`` modes a sequence with no loss token contributes 0
            and is not counted (verl would return NaN for it).
        denominator: replaces the local count (N tokens for ``token-mean``, the number
            of non-empty sequences for ``seq-mean-*``) by a count the caller computed
            over the *whole* optimisation batch.

    Invariance under data parallelism and gradient accumulation: the optimiser step
    should see the loss of the whole batch, whatever way it was split. With
    ``denominator=None`` each micro-batch is normalised by its own count, so averaging
    micro-batch losses equals the whole-batch loss only when every micro-batch has the
    same count; for ``token-mean`` that rarely holds (micro-batches differ in token
    count). To be exactly invariant, pass the global count (all micro-batches of the
    step, all ranks) as ``denominator`` and *sum* the micro-batch losses (each rank
    backpropagates its micro-batches' losses without dividing by the number of
    micro-batches; with DDP, which averages gradients over ``W`` ranks, multiply the
    loss by ``W``). Then the summed loss is exactly the whole-batch aggregate.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"mode must be one of {list(AGG_MODES)}, got {mode!r}")
    _check_same_shape(loss_mat=loss_mat, mask=mask)
    weights = mask.to(loss_mat.dtype)
    masked = torch.where(weights > 0, loss_mat * weights, torch.zeros_like(loss_mat))  # NaN-safe off the mask
    if mode == "token-mean":
        total = masked.sum()
        count = weights.sum() if denominator is None else denominator
        return total / _positive(count)
    tokens = weights.sum(dim=-1)  # (B,)
    seq = masked.sum(dim=-1)  # (B,)
    if mode == "seq-mean-token-mean":
        seq = seq / tokens.clamp(min=1)
    count = (tokens > 0).sum().to(loss_mat.dtype) if denominator is None else denominator
    return seq.sum() / _positive(count)


def _positive(count: float | torch.Tensor) -> float | torch.Tensor:
    """A count of 0 means there is nothing to average: the sum is 0 too, so divide by 1."""
    if isinstance(count, torch.Tensor):
        return count.clamp(min=1)
    if count < 0:
        raise ValueError(f"denominator must be >= 0, got {count}")
    return max(count, 1)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    clip_low: float = knob(0.2, "PPO clip range below 1: the ratio is clipped at 1 - clip_low")
    clip_high: float = knob(0.2, "PPO clip range above 1: the ratio is clipped at 1 + clip_high (DAPO: raise it)")
    dual_clip_c: float | None = knob(None, "dual-clip bound for negative advantages (> 1, verl uses 3); null = off")
    kl_coef: float = knob(0.0, "weight of the KL-to-reference loss term; > 0 needs reference log-probs")
    kl_type: str = knob("k3", "KL estimator: k1 (logp - ref), k2 (0.5 (logp - ref)^2), k3 (low-variance, verl)")
    entropy_coef: float = knob(0.0, "weight of the entropy bonus (subtracted from the loss)")
    agg_mode: str = knob("token-mean", "loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum")

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must be in [0, 1) so that 1 - clip_low > 0, got {self.clip_low}")
        if not self.clip_high >= 0.0:
            raise ValueError(f"clip_high must be >= 0, got {self.clip_high}")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (it bounds -A*ratio above 1 + clip_high), got {self.dual_clip_c}")
        if not self.kl_coef >= 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_type not in KL_TYPES:
            raise ValueError(f"kl_type must be one of {list(KL_TYPES)}, got {self.kl_type!r}")
        if not self.entropy_coef >= 0.0:
            raise ValueError(f"entropy_coef must be >= 0 (a bonus, subtracted), got {self.entropy_coef}")
        if self.agg_mode not in AGG_MODES:
            raise ValueError(f"agg_mode must be one of {list(AGG_MODES)}, got {self.agg_mode!r}")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kl_type: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate on sampled tokens; (B, T) -> (B, T). verl's k1/k2/k3."""
    if kl_type == "k1":
        return logp - ref_logp
    if kl_type == "k2":
        return 0.5 * (logp - ref_logp).square()
    if kl_type == "k3":
        log_ratio = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
        return torch.clamp(log_ratio.exp() - log_ratio - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"kl_type must be one of {list(KL_TYPES)}, got {kl_type!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    config: LossConfig,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    denominator: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy loss with optional KL and entropy terms.

    Args:
        logp:       (B, T) log-prob of the sampled tokens under the current policy (grad flows).
        old_logp:   (B, T) the same under the policy that sampled them (no grad needed).
        advantages: (B, T) per-token advantages (from :mod:`mapo.algo.advantage`).
        mask:       (B, T) bool or {0, 1}, 1 on tokens inside the loss.
        config:     :class:`LossConfig`.
        ref_logp:   (B, T) reference-policy log-probs; required when ``kl_coef > 0``.
        entropy:    (B, T) per-token policy entropy; required when ``entropy_coef > 0``.
        denominator: passed to :func:`agg_loss` for every term (see there).
    Returns:
        ``(loss, metrics)``: a scalar tensor, and floats ``pg_loss``, ``clip_frac`` (share
        of tokens where the clipped term is active), ``ppo_kl`` (mean ``old_logp - logp``),
        ``ratio_mean/min/max``, plus ``clip_frac_lower`` with dual clip, ``kl`` with
        ``ref_logp``, ``entropy`` with ``entropy``. Metrics are local to this
        micro-batch (token means over ``mask``); min/max are NaN when the mask is empty.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if ref_logp is not None:
        _check_same_shape(logp=logp, ref_logp=ref_logp)
    if entropy is not None:
        _check_same_shape(logp=logp, entropy=entropy)
    if config.kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp, a (B, T) tensor of reference log-probs")
    if config.entropy_coef > 0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs entropy, a (B, T) tensor of per-token entropies")

    log_ratio = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    pg = torch.maximum(unclipped, clipped)
    metrics: dict[str, float] = {}
    if config.dual_clip_c is not None:
        bound = -advantages * config.dual_clip_c
        metrics["clip_frac_lower"] = _masked_mean((pg > bound) & (advantages < 0), mask)
        pg = torch.where(advantages < 0, torch.minimum(pg, bound), pg)
    pg_loss = agg_loss(pg, mask, config.agg_mode, denominator=denominator)
    loss = pg_loss

    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, config.kl_type)
        metrics["kl"] = _masked_mean(kl, mask)
        if config.kl_coef > 0:
            loss = loss + config.kl_coef * agg_loss(kl, mask, config.agg_mode, denominator=denominator)
    if entropy is not None:
        metrics["entropy"] = _masked_mean(entropy, mask)
        if config.entropy_coef > 0:
            loss = loss - config.entropy_coef * agg_loss(entropy, mask, config.agg_mode, denominator=denominator)

    on = mask.bool()
    metrics["pg_loss"] = float(pg_loss.detach())
    metrics["clip_frac"] = _masked_mean(clipped > unclipped, mask)
    metrics["ppo_kl"] = _masked_mean(-log_ratio, mask)
    metrics["ratio_mean"] = _masked_mean(ratio, mask)
    metrics["ratio_min"] = float(ratio.detach()[on].min()) if on.any() else float("nan")
    metrics["ratio_max"] = float(ratio.detach()[on].max()) if on.any() else float("nan")
    return loss, metrics


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Local token mean of ``values`` over ``mask`` as a float (0 on an empty mask)."""
    weights = mask.to(torch.float64)
    total = (values.detach().to(torch.float64) * weights).sum()
    return float(total / weights.sum().clamp(min=1))


def _check_same_shape(**tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    if not isinstance(first, torch.Tensor) or first.dim() != 2:
        raise ValueError(f"{names[0]} must be a (B, T) tensor, got {_describe(first)}")
    for name in names[1:]:
        t = tensors[name]
        if not isinstance(t, torch.Tensor) or t.shape != first.shape:
            raise ValueError(
                f"{name} must be a tensor of shape (B, T) = {tuple(first.shape)} like {names[0]}, got {_describe(t)}"
            )


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
