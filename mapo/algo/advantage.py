"""Advantage estimators: pure functions registered by name, one signature for all.

Every estimator is called as::

    fn(outcome, group, segment_ids, semantic, *, config) -> advantages  # (B, T)

with ``B`` trajectories, ``T`` tokens and ``K`` observations per trajectory:

- ``outcome``     (B,)   float, the outcome reward R_i of each trajectory;
- ``group``       (B,)   integer prompt id; trajectories sharing an id form one group
  of ``G`` samples (groups may have different sizes);
- ``segment_ids`` (B, T) integer, ``j >= 0`` for tokens of assistant segment ``j``,
  ``-1`` for every token outside the loss (prompt, observations, padding);
- ``semantic``    (B, K) float, ``semantic[:, c]`` is the verifier score of
  observation ``k = c + 1``, NaN where absent; or ``None``.

The result is (B, T), exactly 0 where ``segment_ids == -1``. The trainer never
branches on the estimator's name: it calls ``get_estimator(config.estimator)``, which
returns the registered function behind the checks every estimator shares (inputs,
semantic scores present when the estimator needs them, ``beta`` within its limit) and
with ``group`` already replaced by the baseline's groups: a new estimator writes only
its formula and states its facts in ``@register_estimator``.

Where we depart from or guess at the paper (arXiv 2604.06777): the paper's advantage
formula is not public. ``mapo`` below is *our* definition (docs/algorithm.md):

- outcome part: GRPO, numerically identical to verl's
  ``compute_grpo_outcome_advantage`` (unbiased ``torch.std``, ``eps`` added to the
  std, a group of one gets mean 0 and std 1, i.e. ``A = R / (1 + eps)``, not 0);
- semantic part: ``S_hat = (s - mu_s) / (sigma_s + eps)`` with ``mu_s``, ``sigma_s``
  over *all present observations of the group* (pooled over trajectories and turns);
  ``sigma_s`` is the unbiased std, as in GRPO; a group with fewer than two present
  observations gets ``S_hat = 0`` (one score has nothing to be compared with);
  ``norm_by_std=False`` drops the division for both parts (Dr. GRPO style);
- credit: segment ``j`` is credited with observations ``k >= j' = max(j, 1)``
  (segment 0 caused observation 1; segment ``j >= 1`` describes observation ``j``
  and causes ``j + 1``), as a lambda-discounted *weighted mean* over the present
  ones, 0 if none;
- ``beta = 0.4`` and ``lam = 0.95`` come from secondary sources and are unverified;
- ``baseline: batch`` (ours, off by default) normalises over the whole step instead of
  each prompt's group, for every estimator (:func:`baseline_groups`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch

from mapo.core.config import knob

Estimator = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class EstimatorFacts:
    """What callers need to know about an estimator, recorded when it is registered.

    The trainer, the config check and the verl adapter read these instead of
    branching on estimator names.
    """

    fn: Estimator  # the registered estimator, checks and baseline included (:func:`_checked`)
    needs_semantic: bool  # refuses to run without (B, K) semantic scores (a verifier must be configured)
    max_beta: float | None = None  # largest beta the estimator is defined for (None: no upper limit)
    beta_limit_reason: str = ""  # why beta is limited, said in the config error


_ESTIMATORS: dict[str, EstimatorFacts] = {}
BASELINES = ("group", "batch")


def register_estimator(
    name: str, *, needs_semantic: bool, max_beta: float | None = None, beta_limit_reason: str = ""
) -> Callable[[Estimator], Estimator]:
    """Register the maths ``fn`` under ``name`` with its facts; registering a second function under one name is an error.

    The decorator returns (and :func:`get_estimator` gives) ``fn`` wrapped by :func:`_checked`:
    the input checks, the facts' checks (semantic scores present, ``beta`` in range) and the
    baseline (:func:`baseline_groups`) run once there, so ``fn`` holds only its formula.
    """

    def decorator(fn: Estimator) -> Estimator:
        if name in _ESTIMATORS and _ESTIMATORS[name].fn.__wrapped__ is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered ({_ESTIMATORS[name].fn.__name__})")
        facts = EstimatorFacts(fn, needs_semantic, max_beta, beta_limit_reason)
        checked = _checked(name, facts)
        _ESTIMATORS[name] = dataclasses.replace(facts, fn=checked)
        return checked

    return decorator


def _checked(name: str, facts: EstimatorFacts) -> Estimator:
    """``facts.fn`` behind the checks every estimator shares, with ``group`` replaced by its baseline groups."""
    fn = facts.fn

    @functools.wraps(fn)
    def estimator(
        outcome: torch.Tensor,
        group: torch.Tensor,
        segment_ids: torch.Tensor,
        semantic: torch.Tensor | None = None,
        *,
        config: AdvantageConfig,
    ) -> torch.Tensor:
        _check_inputs(outcome, group, segment_ids, semantic)
        group = baseline_groups(group, config)
        if facts.max_beta is not None and config.beta > facts.max_beta:
            raise ValueError(f"{name} needs config.beta <= {facts.max_beta:g} (see AdvantageConfig), got {config.beta}")
        if facts.needs_semantic and semantic is None:
            raise ValueError(
                f"advantage estimator {name!r} needs semantic scores: pass a (B, K) float tensor, "
                "NaN where an observation is absent (all-NaN if there are none)"
            )
        return fn(outcome, group, segment_ids, semantic, config=config)

    return estimator


def estimator_facts(name: str) -> EstimatorFacts:
    """The facts of the estimator registered under ``name``; unknown names raise ``ValueError`` listing the known ones."""
    if name not in _ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {', '.join(list_estimators())}")
    return _ESTIMATORS[name]


def get_estimator(name: str) -> Estimator:
    """The estimator registered under ``name``; unknown names raise ``ValueError`` listing the known ones."""
    return estimator_facts(name).fn


def list_estimators() -> list[str]:
    """Names of the registered estimators, sorted."""
    return sorted(_ESTIMATORS)


def semantic_estimators() -> list[str]:
    """Names of the registered estimators that need semantic scores (a verifier), sorted."""
    return [name for name in list_estimators() if _ESTIMATORS[name].needs_semantic]


# ---------------------------------------------------------------------------------------------
# input checks


def _check_inputs(
    outcome: torch.Tensor, group: torch.Tensor, segment_ids: torch.Tensor, semantic: torch.Tensor | None
) -> None:
    if not isinstance(outcome, torch.Tensor) or outcome.dim() != 1 or not outcome.is_floating_point():
        raise ValueError(f"outcome must be a float tensor of shape (B,), got {_describe(outcome)}")
    B = outcome.shape[0]
    if not torch.isfinite(outcome).all():
        raise ValueError("outcome must be finite (NaN or inf reward)")
    if (
        not isinstance(group, torch.Tensor)
        or group.shape != (B,)
        or group.is_floating_point()
        or group.is_complex()
        or group.dtype == torch.bool
    ):
        raise ValueError(f"group must be an integer tensor of shape (B,)=({B},), got {_describe(group)}")
    if (
        not isinstance(segment_ids, torch.Tensor)
        or segment_ids.dim() != 2
        or segment_ids.shape[0] != B
        or segment_ids.is_floating_point()
        or segment_ids.dtype == torch.bool
    ):
        raise ValueError(f"segment_ids must be an integer tensor of shape (B, T) with B={B}, got {_describe(segment_ids)}")
    if segment_ids.numel() and int(segment_ids.min()) < -1:
        raise ValueError(f"segment_ids must be >= -1 (-1 = outside the loss), got min {int(segment_ids.min())}")
    if semantic is not None:
        if (
            not isinstance(semantic, torch.Tensor)
            or semantic.dim() != 2
            or semantic.shape[0] != B
            or not semantic.is_floating_point()
        ):
            raise ValueError(
                f"semantic must be a float tensor of shape (B, K) with B={B} (NaN where absent), "
                f"got {_describe(semantic)}"
            )
        if torch.isinf(semantic).any():
            raise ValueError("semantic must be finite or NaN (absent); got inf")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


# ---------------------------------------------------------------------------------------------
# building blocks


def baseline_groups(group: torch.Tensor, config: AdvantageConfig) -> torch.Tensor:
    """(B,) the ids whose members are normalised together: ``group`` itself, or one id for all (``baseline: batch``).

    A group whose G samples agree on an action (every sample zooms on the same cell) gives that
    action no advantage under GRPO however good or bad it was; a batch baseline compares prompts
    with each other, so a zoom that found the object on one prompt is credited against a miss on
    another. The semantic statistics of ``mapo`` are pooled the same way.
    """
    return torch.zeros_like(group) if config.baseline == "batch" else group


def _group_index(group: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group index in [0, n_groups) for each trajectory, and n_groups."""
    _, inverse = torch.unique(group, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    return inverse, n_groups


def group_normalize(values: torch.Tensor, group: torch.Tensor, *, eps: float, norm_by_std: bool) -> torch.Tensor:
    """GRPO's group-normalised score, exactly as verl's ``compute_grpo_outcome_advantage``.

    Args:
        values: (B,) float, one scalar per trajectory.
        group:  (B,) int prompt id.
    Returns:
        (B,) ``(v - mean_g) / (std_g + eps)`` (``std_g`` unbiased) or ``v - mean_g``
        without ``norm_by_std``. A group of one uses mean 0 and std 1, as verl does.
    """
    inverse, n_groups = _group_index(group)
    count = torch.bincount(inverse, minlength=n_groups).to(values.dtype)  # (n_groups,)
    total = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    mean = total / count
    sq_dev = (values - mean[inverse]) ** 2  # (B,)
    var = torch.zeros_like(total).index_add_(0, inverse, sq_dev) / (count - 1).clamp(min=1)
    singleton = count == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(var), var.sqrt())
    centred = values - mean[inverse]
    return centred / (std[inverse] + eps) if norm_by_std else centred


def normalize_semantic(semantic: torch.Tensor, group: torch.Tensor, *, eps: float, norm_by_std: bool) -> torch.Tensor:
    """``S_hat = (s - mu_s) / (sigma_s + eps)``, statistics over all present observations of a group.

    Args:
        semantic: (B, K) float, NaN where absent.
        group:    (B,) int prompt id.
    Returns:
        (B, K) NaN where absent. ``sigma_s`` is the unbiased std (as in GRPO); a group
        with fewer than two present observations gets 0 at its present entries.
    """
    inverse, n_groups = _group_index(group)
    present = ~torch.isnan(semantic)  # (B, K)
    filled = torch.where(present, semantic, torch.zeros_like(semantic))
    zeros = torch.zeros(n_groups, dtype=semantic.dtype, device=semantic.device)
    count = zeros.index_add(0, inverse, present.sum(dim=1).to(semantic.dtype))  # (n_groups,)
    mean = zeros.index_add(0, inverse, filled.sum(dim=1)) / count.clamp(min=1)
    dev = torch.where(present, semantic - mean[inverse, None], torch.zeros_like(semantic))  # (B, K)
    var = zeros.index_add(0, inverse, (dev**2).sum(dim=1)) / (count - 1).clamp(min=1)
    scaled = dev / (var.sqrt()[inverse, None] + eps) if norm_by_std else dev
    comparable = (count >= 2)[inverse, None]  # (B, 1)
    scaled = torch.where(comparable, scaled, torch.zeros_like(scaled))
    return torch.where(present, scaled, torch.full_like(scaled, float("nan")))


def segment_credit(segment_ids: torch.Tensor, semantic_hat: torch.Tensor, lam: float) -> torch.Tensor:
    """Semantic credit of every token: the lambda-discounted mean of the later observations.

    ``C_{i,j} = sum_{k >= j'} lam^(k - j') S_hat_{i,k} / sum_{k >= j'} lam^(k - j')`` over
    the *present* observations ``k`` of trajectory ``i``, with ``j' = max(j, 1)``; 0 if
    there are none (and 0 at tokens outside the loss).

    Args:
        segment_ids:  (B, T) int, assistant segment index, -1 outside the loss.
        semantic_hat: (B, K) float normalised scores, ``[:, c]`` is observation k = c+1,
                      NaN where absent.
        lam: discount in [0, 1].
    Returns:
        (B, T) float, the credit ``C_{i, segment_ids[i, t]}``.
    """
    if segment_ids.dim() != 2 or semantic_hat.dim() != 2 or semantic_hat.shape[0] != segment_ids.shape[0]:
        raise ValueError(
            f"segment_credit needs segment_ids (B, T) and semantic_hat (B, K), got "
            f"{tuple(segment_ids.shape)} and {tuple(semantic_hat.shape)}"
        )
    dtype, device = semantic_hat.dtype, semantic_hat.device
    n_segments = int(segment_ids.max()) + 1 if segment_ids.numel() else 0
    out = torch.zeros(segment_ids.shape, dtype=dtype, device=device)
    if n_segments <= 0 or semantic_hat.shape[1] == 0:
        return out
    K = semantic_hat.shape[1]
    first = torch.arange(n_segments, device=device).clamp(min=1)  # (J,) j' = max(j, 1)
    k = torch.arange(1, K + 1, device=device)  # (K,) observation numbers
    gap = k[None, :] - first[:, None]  # (J, K) k - j'
    weight = torch.where(gap >= 0, torch.tensor(lam, dtype=dtype, device=device) ** gap.clamp(min=0), 0.0)  # (J, K)
    present = ~torch.isnan(semantic_hat)
    values = torch.where(present, semantic_hat, torch.zeros_like(semantic_hat))
    numer = values @ weight.T  # (B, J)
    denom = present.to(dtype) @ weight.T  # (B, J)
    credit = torch.where(denom > 0, numer / torch.where(denom > 0, denom, 1.0), 0.0)  # (B, J)
    in_loss = segment_ids >= 0
    gathered = credit.gather(1, segment_ids.clamp(min=0))  # (B, T)
    return torch.where(in_loss, gathered, out)


def _to_tokens(per_trajectory: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Broadcast (B,) values to (B, T), exactly 0 outside the loss."""
    values = per_trajectory[:, None].expand(segment_ids.shape)  # (B, T)
    return torch.where(segment_ids >= 0, values, torch.zeros_like(values))


# ---------------------------------------------------------------------------------------------
# estimators


@register_estimator("grpo", needs_semantic=False)
def grpo(
    outcome: torch.Tensor,
    group: torch.Tensor,
    segment_ids: torch.Tensor,
    semantic: torch.Tensor | None = None,
    *,
    config: AdvantageConfig,
) -> torch.Tensor:
    """GRPO: ``A_i = (R_i - mean_g R) / (std_g R + eps)`` on every loss token; ``semantic`` is ignored.

    Shapes: outcome (B,), group (B,), segment_ids (B, T), semantic (B, K) or None -> (B, T).
    """
    a_hat = group_normalize(outcome, group, eps=config.eps, norm_by_std=config.norm_by_std)
    return _to_tokens(a_hat, segment_ids)


@register_estimator("mapo", needs_semantic=True)
def mapo(
    outcome: torch.Tensor,
    group: torch.Tensor,
    segment_ids: torch.Tensor,
    semantic: torch.Tensor | None = None,
    *,
    config: AdvantageConfig,
) -> torch.Tensor:
    """MAPO (our definition): ``A_{i,j} = A_hat_i + beta * C_{i,j}``.

    ``A_hat`` is GRPO's outcome advantage, ``C`` the segment credit of
    :func:`segment_credit` over :func:`normalize_semantic` scores. With all-NaN
    ``semantic`` this is exactly ``grpo``.
    Shapes: outcome (B,), group (B,), segment_ids (B, T), semantic (B, K) -> (B, T).
    """
    credit = _credit(outcome, group, segment_ids, semantic, config)
    a_hat = group_normalize(outcome, group, eps=config.eps, norm_by_std=config.norm_by_std)
    return _to_tokens(a_hat, segment_ids) + config.beta * credit


@register_estimator(
    "mapo_gated", needs_semantic=True, max_beta=1.0, beta_limit_reason="its gate 1 + beta*tanh(C) must stay positive"
)
def mapo_gated(
    outcome: torch.Tensor,
    group: torch.Tensor,
    segment_ids: torch.Tensor,
    semantic: torch.Tensor | None = None,
    *,
    config: AdvantageConfig,
) -> torch.Tensor:
    """Gated MAPO: ``A_{i,j} = A_hat_i * (1 + beta * tanh(C_{i,j}))``.

    The semantic credit only rescales the outcome advantage (never flips its sign for
    beta <= 1), so a group with identical rewards gets zero advantage, as in GRPO.
    Shapes: outcome (B,), group (B,), segment_ids (B, T), semantic (B, K) -> (B, T).
    """
    credit = _credit(outcome, group, segment_ids, semantic, config)
    a_hat = group_normalize(outcome, group, eps=config.eps, norm_by_std=config.norm_by_std)
    return _to_tokens(a_hat, segment_ids) * (1.0 + config.beta * torch.tanh(credit))


@register_estimator(
    "reward_mix", needs_semantic=True, max_beta=1.0, beta_limit_reason="it weights R by (1 - beta), which must not turn negative"
)
def reward_mix(
    outcome: torch.Tensor,
    group: torch.Tensor,
    segment_ids: torch.Tensor,
    semantic: torch.Tensor | None = None,
    *,
    config: AdvantageConfig,
) -> torch.Tensor:
    """Trajectory-level mix, then GRPO: ``R'_i = (1 - beta) R_i + beta * mean_k s_{i,k}``.

    The mean is over the present observations of trajectory i (raw scores, not
    normalised). A trajectory with none uses ``config.no_obs_semantic``, or by default
    the lowest per-trajectory mean of its group (0 if nobody in the group has one, so
    that group reduces to GRPO on ``(1 - beta) R``).
    Shapes: outcome (B,), group (B,), segment_ids (B, T), semantic (B, K) -> (B, T).
    """
    mean_s = trajectory_semantic_mean(semantic, group, config.no_obs_semantic)
    mixed = (1.0 - config.beta) * outcome + config.beta * mean_s.to(outcome.dtype)
    a_hat = group_normalize(mixed, group, eps=config.eps, norm_by_std=config.norm_by_std)
    return _to_tokens(a_hat, segment_ids)


def trajectory_semantic_mean(semantic: torch.Tensor, group: torch.Tensor, no_obs: float | None) -> torch.Tensor:
    """Mean present score per trajectory; (B, K) NaN-padded -> (B,). See :func:`reward_mix` for the fill rule."""
    present = ~torch.isnan(semantic)
    n = present.sum(dim=1)  # (B,)
    mean = torch.where(present, semantic, torch.zeros_like(semantic)).sum(dim=1) / n.clamp(min=1)
    has = n > 0
    if no_obs is not None:
        return torch.where(has, mean, torch.full_like(mean, no_obs))
    inverse, n_groups = _group_index(group)
    big = torch.full_like(mean, float("inf"))
    group_min = torch.full((n_groups,), float("inf"), dtype=mean.dtype, device=mean.device).scatter_reduce(
        0, inverse, torch.where(has, mean, big), reduce="amin"
    )
    fill = torch.where(torch.isinf(group_min), torch.zeros_like(group_min), group_min)[inverse]  # (B,)
    return torch.where(has, mean, fill)


def _credit(
    outcome: torch.Tensor,
    group: torch.Tensor,
    segment_ids: torch.Tensor,
    semantic: torch.Tensor,
    config: AdvantageConfig,
) -> torch.Tensor:
    """(B, T) semantic credit in the outcome's dtype."""
    s_hat = normalize_semantic(semantic.to(outcome.dtype), group, eps=config.eps, norm_by_std=config.norm_by_std)
    return segment_credit(segment_ids, s_hat, config.lam)


# ---------------------------------------------------------------------------------------------
# the config (after the estimators: its help lists them)


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    estimator: str = knob("mapo", f"advantage estimator, by registered name: {', '.join(list_estimators())}")
    beta: float = knob(0.4, f"weight of the semantic term ({', '.join(semantic_estimators())}); unverified paper value")
    lam: float = knob(0.95, "discount over later observations in a segment's semantic credit, in [0, 1]")
    eps: float = knob(1e-6, "added to the group std before dividing (as verl's GRPO)")
    norm_by_std: bool = knob(True, "divide by the group std (GRPO); false: only subtract the mean (Dr. GRPO)")
    baseline: str = knob(
        "group", "whose rewards R_i is compared with: 'group' (its prompt's G samples, GRPO) or 'batch' (every "
        "trajectory of the step on this rank, a REINFORCE baseline: credits what differs between prompts)"
    )
    no_obs_semantic: float | None = knob(
        None,
        "reward_mix: semantic value of a trajectory with no scored observation; "
        "null = the lowest per-trajectory mean of its group (not looking never beats looking)",
    )

    def __post_init__(self) -> None:
        if self.estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {list_estimators()}, got {self.estimator!r}")
        if not self.beta >= 0.0:
            raise ValueError(f"beta must be >= 0 (it weights the semantic term), got {self.beta}")
        facts = _ESTIMATORS[self.estimator]
        if facts.max_beta is not None and self.beta > facts.max_beta:
            raise ValueError(
                f"beta must be <= {facts.max_beta:g} for {self.estimator}: {facts.beta_limit_reason}; got {self.beta}"
            )
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1] (a discount), got {self.lam}")
        if not self.eps > 0.0:
            raise ValueError(f"eps must be > 0 (it guards a division by the std), got {self.eps}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {list(BASELINES)}, got {self.baseline!r}")
