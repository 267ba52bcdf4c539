"""mapo's advantage estimators in verl's registry, called the way verl calls estimators.

verl calls a registered estimator as ``fn(token_level_rewards, response_mask, index,
config, ...) -> (advantages, returns)``. The adapters here turn that call into
ours, ``fn(outcome, group, segment_ids, semantic, *, config)`` of
:mod:`mapo.algo.advantage`, and compute exactly the same numbers:

- ``outcome``     (B,)   = ``token_level_rewards.sum(-1)``, as verl's GRPO does;
- ``group``       (B,)   = dense index of ``index`` (verl's ``uid`` per prompt);
- ``segment_ids`` (B, T) = the agent loop's ``mapo_segment_spans`` (one ``[start, end)``
  response-token span per assistant turn), restricted to ``response_mask``; without
  spans, the runs of ``response_mask == 1`` (verl's agent loops mask tool tokens
  with 0, so each run is one assistant turn);
- ``semantic``    (B, K) = the agent loop's ``mapo_semantic`` (one score per
  observation, None where absent), NaN-padded.

How the per-observation data reaches the estimator (the extension points used):

1. the agent loop writes ``mapo_semantic`` and ``mapo_segment_spans`` into
   ``AgentLoopOutput.extra_fields``; verl copies extra fields into
   ``DataProto.non_tensor_batch`` (agent_loop.py, ``_postprocess``);
2. the estimators are registered with ``core_algos.register_adv_est``;
3. verl 0.9.1's ``ray_trainer.compute_advantage`` forwards ``non_tensor_batch`` to
   *one* estimator only, ``gdpo``, by name. Upstream PR verl-project/verl#7473
   (open) forwards it to every estimator whose signature accepts it; until that is
   released, :func:`install_non_tensor_passthrough` does the same for the mapo
   estimators, in the trainer process (the launcher :mod:`.main` calls it). This
   is the one place we patch verl, and it works with the legacy trainer
   (``trainer.use_v1=false``): the v1 trainer reads a fixed list of fields from its
   TransferQueue and has no way to pass per-sample data to an estimator.

Hyper-parameters come from verl's algorithm config: ``algorithm.mapo`` (a mapping
of :class:`mapo.algo.advantage.AdvantageConfig` fields, e.g.
``+algorithm.mapo.beta=0.4``); ``norm_by_std`` defaults to verl's
``algorithm.norm_adv_by_std_in_grpo``. verl's ``algorithm.lam`` is GAE's lambda and
is *not* used (ours is ``algorithm.mapo.lam``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch

from mapo.algo.advantage import AdvantageConfig, estimator_facts, get_estimator, list_estimators
from mapo.core.config import from_dict

def verl_name_of(name: str) -> str:
    """The verl registry name of mapo estimator ``name``: prefixed so it never collides with verl's own."""
    return name if name.startswith("mapo") else f"mapo_{name}"


# verl registry name -> mapo.algo.advantage name, for every registered estimator (mapo, mapo_gated,
# mapo_reward_mix, mapo_grpo for the built-in ones).
VERL_ESTIMATORS: dict[str, str] = {verl_name_of(name): name for name in list_estimators()}
SEMANTIC_KEY = "mapo_semantic"
SPANS_KEY = "mapo_segment_spans"


def needs_semantic(name: str) -> bool:
    """Whether verl estimator ``name`` needs per-observation semantic scores (its registered fact)."""
    return estimator_facts(VERL_ESTIMATORS[name]).needs_semantic


def advantage_config(name: str, config: Any) -> AdvantageConfig:
    """Our :class:`AdvantageConfig` for verl estimator ``name`` from verl's ``algorithm`` config (or None)."""
    section: dict[str, Any] = {}
    if config is not None and hasattr(config, "get"):
        norm = config.get("norm_adv_by_std_in_grpo", None)
        if norm is not None:
            section["norm_by_std"] = bool(norm)
        extra = config.get("mapo", None)
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise ValueError(f"algorithm.mapo must be a mapping of AdvantageConfig fields, got {type(extra).__name__}")
            section.update({str(k): _plain(v) for k, v in extra.items()})
    if "estimator" in section and section["estimator"] != VERL_ESTIMATORS[name]:
        raise ValueError(
            f"algorithm.mapo.estimator={section['estimator']!r} contradicts algorithm.adv_estimator={name!r}; "
            "choose the estimator with algorithm.adv_estimator only"
        )
    section["estimator"] = VERL_ESTIMATORS[name]
    return from_dict(AdvantageConfig, section, prefix="algorithm.mapo.")


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain Python (from_dict wants dicts and lists)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with verl
        pass
    return value


def group_ids(index: Any, batch_size: int) -> torch.Tensor:
    """(B,) long dense group id from verl's ``uid`` array (any hashable per trajectory)."""
    if index is None:
        raise ValueError("index (verl's per-prompt uid, shape (B,)) is required: groups are formed by prompt")
    values = np.asarray(index, dtype=object)
    if values.shape != (batch_size,):
        raise ValueError(f"index must have shape (B,)=({batch_size},), got {values.shape}")
    _, inverse = np.unique(values.astype(str), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def segments_from_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids: the j-th run of ``response_mask == 1`` in a row is segment j, -1 elsewhere."""
    on = (response_mask > 0).long()  # (B, T)
    before = torch.nn.functional.pad(on, (1, 0))[:, :-1]  # (B, T) the mask one token earlier
    starts = (on == 1) & (before == 0)  # (B, T) a run begins here
    run_index = torch.cumsum(starts.long(), dim=1) - 1  # (B, T)
    return torch.where(on == 1, run_index, torch.full_like(run_index, -1))


def segments_from_spans(spans: Sequence[Any], response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids from per-row lists of ``[start, end)`` spans, only where ``response_mask`` is 1.

    Spans beyond ``T`` are clipped (verl truncates responses to ``response_length``).
    """
    B, T = response_mask.shape
    if len(spans) != B:
        raise ValueError(f"{SPANS_KEY} must hold one list of spans per trajectory (B={B}), got {len(spans)}")
    out = torch.full((B, T), -1, dtype=torch.long)
    for i, row in enumerate(spans):
        previous_end = 0
        for j, span in enumerate(row if row is not None else []):
            start, end = (int(v) for v in span)
            if not 0 <= start <= end or start < previous_end:
                raise ValueError(f"{SPANS_KEY}[{i}][{j}]={list(span)} must be an increasing [start, end) span")
            out[i, start:end] = j
            previous_end = end
    return torch.where(response_mask > 0, out, torch.full_like(out, -1))


def semantic_matrix(rows: Sequence[Any], batch_size: int) -> torch.Tensor:
    """(B, K) float32 from per-row lists of scores (None or NaN = absent), NaN-padded; K >= 1."""
    if len(rows) != batch_size:
        raise ValueError(f"{SEMANTIC_KEY} must hold one list per trajectory (B={batch_size}), got {len(rows)}")
    lists = [list(r) if r is not None else [] for r in rows]
    K = max([len(r) for r in lists] + [1])
    out = torch.full((batch_size, K), float("nan"), dtype=torch.float32)
    for i, row in enumerate(lists):
        for c, value in enumerate(row):
            if value is not None:
                out[i, c] = float(value)
    return out


def _check_tensors(token_level_rewards: Any, response_mask: Any) -> None:
    for name, value in (("token_level_rewards", token_level_rewards), ("response_mask", response_mask)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{name} must be a (B, T) tensor, got {type(value).__name__}")
    if token_level_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must have the same (B, T) shape"
        )


def _make_adapter(verl_name: str):
    mapo_name = VERL_ESTIMATORS[verl_name]

    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        index: Any = None,
        config: Any = None,
        non_tensor_batch: Mapping[str, Any] | None = None,
        **unused: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """verl-signature adapter; returns (advantages, returns), both (B, T), 0 outside the response mask.

        Args:
            token_level_rewards: (B, T) float, verl's per-token rewards (the outcome at the last token).
            response_mask: (B, T) 0/1, 1 on policy tokens (tool tokens are 0).
            index: (B,) verl's prompt uid; equal uids form one group.
            config: verl's ``algorithm`` config; ``algorithm.mapo`` holds our knobs.
            non_tensor_batch: verl's per-trajectory extras, with ``mapo_semantic`` (B lists of
                K_i scores) and optionally ``mapo_segment_spans``.
        """
        _check_tensors(token_level_rewards, response_mask)
        B = token_level_rewards.shape[0]
        cfg = advantage_config(verl_name, config)
        extras = non_tensor_batch if non_tensor_batch is not None else {}
        semantic = None
        if SEMANTIC_KEY in extras:
            semantic = semantic_matrix(extras[SEMANTIC_KEY], B)
        elif needs_semantic(verl_name):
            raise ValueError(
                f"advantage estimator {verl_name!r} got no per-observation semantic scores "
                f"(non_tensor_batch[{SEMANTIC_KEY!r}]). Roll out with the mapo agent loop "
                "(actor_rollout_ref.rollout.agent.default_agent_loop=mapo_zoom_agent) and launch with "
                "`python -m mapo.integrations.verl.main` (it installs the non_tensor_batch passthrough, "
                "which verl 0.9.1 lacks)"
            )
        if SPANS_KEY in extras:
            segment_ids = segments_from_spans(extras[SPANS_KEY], response_mask)
        else:
            segment_ids = segments_from_mask(response_mask)
        outcome = token_level_rewards.sum(dim=-1).float()  # (B,)
        group = group_ids(index, B)
        fn = get_estimator(mapo_name)
        advantages = fn(outcome, group, segment_ids, semantic, config=cfg).to(token_level_rewards.dtype)  # (B, T)
        advantages = advantages * response_mask.to(advantages.dtype)
        return advantages, advantages

    estimator.__name__ = f"verl_{verl_name}"
    estimator.__qualname__ = estimator.__name__
    return estimator


ADAPTERS = {name: _make_adapter(name) for name in VERL_ESTIMATORS}


def register_estimators() -> None:
    """Register the mapo family in verl's advantage-estimator registry (idempotent)."""
    from verl.trainer.ppo.core_algos import register_adv_est

    for name, fn in ADAPTERS.items():
        register_adv_est(name)(fn)


def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def install_non_tensor_passthrough() -> None:
    """Make verl 0.9.1's ``ray_trainer.compute_advantage`` pass ``non_tensor_batch`` to the mapo estimators.

    Behaves as upstream PR verl-project/verl#7473: for an estimator registered under a
    mapo name, verl's call is made with ``non_tensor_batch`` added; every other
    estimator goes through verl's function unchanged. Idempotent. Must run in the
    process that runs ``RayPPOTrainer.fit`` (the launcher's TaskRunner).
    """
    from verl.trainer.ppo import core_algos, ray_trainer

    original = ray_trainer.compute_advantage
    if getattr(original, "_mapo_passthrough", False):
        return

    def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True, config=None):
        name = adv_estimator.value if isinstance(adv_estimator, Enum) else adv_estimator
        if name not in VERL_ESTIMATORS:
            return original(data, adv_estimator, gamma, lam, num_repeat, norm_adv_by_std_in_grpo, config)
        fn = core_algos.get_adv_estimator_fn(name)
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = ray_trainer.compute_response_mask(data)
        kwargs = {
            "token_level_rewards": data.batch["token_level_rewards"],
            "response_mask": data.batch["response_mask"],
            "index": data.non_tensor_batch.get("uid"),
            "config": config,
        }
        if _accepts(fn, "non_tensor_batch"):
            kwargs["non_tensor_batch"] = data.non_tensor_batch
        advantages, returns = fn(**kwargs)
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        return data

    compute_advantage._mapo_passthrough = True  # type: ignore[attr-defined]
    compute_advantage.__wrapped__ = original  # type: ignore[attr-defined]
    ray_trainer.compute_advantage = compute_advantage


__all__ = [
    "ADAPTERS",
    "SEMANTIC_KEY",
    "SPANS_KEY",
    "VERL_ESTIMATORS",
    "advantage_config",
    "group_ids",
    "install_non_tensor_passthrough",
    "register_estimators",
    "segments_from_mask",
    "segments_from_spans",
    "semantic_matrix",
]
