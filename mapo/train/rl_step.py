"""One RL step: rollout -> rewards -> semantic scores -> advantages -> bootstrap -> policy update.

:func:`rl_step` is what the recipe (:mod:`mapo.train.rl`) calls once per step. The
rollout batch is collated once (:func:`mapo.engine.trajectory.collate`); every mini- and
micro-batch of the update and every row of the bootstrap is cut out of it
(:meth:`mapo.engine.trajectory.TrainBatch.select`). Shapes: ``B`` trajectories of this rank,
``T`` tokens.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mapo.metrics import heldout

from mapo.algo import semantic
from mapo.algo.advantage import get_estimator
from mapo.algo.loss import policy_loss
from mapo.algo.reward import outcome_reward
from mapo.engine.rollout import rollout
from mapo.train import diagnostics, rollout_log
from mapo.train import distributed as dp
from mapo.train.optim import clip_gradients
from mapo.train.rl_run import Run
from mapo.engine.trajectory import TrainBatch, collate, sequence_logprobs


ROLLOUT_STREAM, SHUFFLE_STREAM, BOOTSTRAP_STREAM = 0, 1, 2  # the step's independent random streams


def step_generator(
    seed: int, step: int, stream: int, device: torch.device | str = "cpu", key: Sequence[int] = ()
) -> torch.Generator:
    """A generator seeded by ``(seed, step, stream, *key)``: independent streams, reproducible on resume."""
    entropy = int(np.random.SeedSequence([seed, step, stream, *key]).generate_state(1, dtype=np.uint64)[0] % (2**63))
    return torch.Generator(device=device).manual_seed(entropy)


def episode_generators(seed: int, step: int, first_prompt: int) -> Callable[[int, int], torch.Generator]:
    """The rollout's per-episode factory: episode ``member`` of local group ``g`` samples from a CPU
    generator seeded by ``(seed, step, first_prompt + g, member)`` (the prompt's index within the step),
    so what an episode samples does not depend on the rank that plays it."""
    return lambda group, member: step_generator(seed, step, ROLLOUT_STREAM, key=(first_prompt + group, member))


@dataclass
class Collected:
    """One step's rollout batch, scored: what the update and the diagnostics read."""

    trajectories: list  # B mapo.engine.trajectory.Trajectory of this rank, grouped by prompt
    batch: TrainBatch  # the B trajectories collated, T tokens; its group (B,) is the prompt id local to this rank
    advantages: torch.Tensor  # (B, T) float, 0 outside the loss
    metrics: dict[str, float]


def collect(run: Run, forced_turns: Callable | None = None) -> Collected:
    """Rollout of step ``run.step``, outcome rewards, semantic scores, advantages (+ their metrics and times)."""
    cfg, step = run.cfg, run.step
    started = time.perf_counter()
    first, count = dp.rank_span(cfg.prompts_per_step, run.dist)  # whole groups: this rank's prompts of the step
    samples = run.data.prompts(step * cfg.prompts_per_step + first, count)
    forced = None if forced_turns is None else (lambda g, m, turn: forced_turns(first + g, m, turn))
    trajectories = rollout(
        samples, run.policy, run.rollout_cfg, generator=episode_generators(cfg.seed, step, first), forced_turns=forced,
    )
    t_rollout = time.perf_counter()
    rewards = [outcome_reward(t, cfg.reward) for t in trajectories]
    metrics = heldout.trajectory_metrics(trajectories, rewards)
    scores = None  # (B, K) s_{i,k}, or None without a verifier
    if run.verifier is not None or not semantic.needs_verifier(cfg.semantic_target):  # oracle_iou reads boxes
        sem = semantic.semantic_scores(
            trajectories, run.verifier, target=cfg.semantic_target,
            max_description_chars=run.rollout_cfg.protocol.max_description_chars, batch_size=cfg.verifier_batch_size,
        )
        scores = sem.scores
        metrics.update(semantic.semantic_metrics(sem))
    t_verifier = time.perf_counter()
    batch = collate(trajectories, run.policy)
    outcome = torch.tensor([r.total for r in rewards], dtype=torch.float32)
    advantages = get_estimator(cfg.advantage.estimator)(
        outcome, batch.group, batch.segment_ids, scores, config=cfg.advantage
    )  # (B, T)
    tool_mask = diagnostics.tool_segment_mask(trajectories, batch.segment_ids)
    metrics.update(diagnostics.advantage_metrics(advantages, batch.loss_mask, tool_mask))
    metrics.update(diagnostics.group_signal_metrics(outcome, batch.group))
    metrics.update({"time_rollout": t_rollout - started, "time_verifier": t_verifier - t_rollout})
    metrics = dp.mean_metrics(metrics, weight=len(trajectories), info=run.dist, summed=("verifier_pairs",))
    if run.dist.is_main and rollout_log.due(step + 1, cfg.save_rollouts_every) and cfg.save_rollouts_groups:
        # What the update reads: these advantages are the tensor update_policy receives.
        rollout_log.save_rollouts(
            run.run_dir, step + 1, trajectories, rewards, scores, advantages, batch.segment_ids, batch.group,
            n_groups=cfg.save_rollouts_groups, estimator=cfg.advantage.estimator, semantic_target=cfg.semantic_target,
        )
    return Collected(trajectories, batch, advantages, metrics)


def rl_step(run: Run, forced_turns: Callable | None = None) -> dict[str, float]:
    """One step: collect (rollout, rewards, semantic scores, advantages), bootstrap, update. Returns its metrics."""
    cfg = run.cfg
    started = time.perf_counter()
    got = collect(run, forced_turns)
    metrics = got.metrics
    t_collected = time.perf_counter()
    if cfg.bootstrap_every and run.step % cfg.bootstrap_every == 0:
        metrics.update(gradient_variance(run, got.batch, got.advantages))
    t_bootstrap = time.perf_counter()
    metrics.update(update_policy(run, got.batch, got.advantages))
    t_update = time.perf_counter()
    metrics.update({
        "time_bootstrap": t_bootstrap - t_collected, "time_update": t_update - t_bootstrap,
        "time_step": t_update - started, "skipped_updates": float(run.skipped_updates),
    })
    return metrics


def _autocast(run: Run):
    if run.cfg.amp == "bf16":
        return torch.autocast(device_type=run.device.type, dtype=torch.bfloat16)
    return nullcontext()


def _micro_batches(rows: Sequence[int], size: int) -> list[list[int]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def _loss_denominator(mask: torch.Tensor, agg_mode: str) -> float:
    """The whole mini-batch's count that :func:`mapo.algo.loss.agg_loss` would use; mask (B, T)."""
    if agg_mode == "token-mean":
        return float(mask.sum())
    return float((mask.sum(dim=1) > 0).sum())


def _forward(run: Run, full: TrainBatch, rows: list[int], advantages: torch.Tensor, synced: bool = True):
    """Rows ``rows`` of the step's batch: (batch, advantages (b, T'), logp (b, T'), entropy, ref_logp or None).

    ``synced``: through ``run.trainer`` (DDP under torchrun: its backward sums gradients over ranks);
    False for gradients taken with ``torch.autograd.grad`` (the bootstrap), which DDP must not see.
    """
    batch = full.select(rows)
    T = batch.input_ids.shape[1]  # right padding: the first T columns of the full batch
    adv = advantages[rows, :T].to(run.device)  # (b, T')
    temperature = run.rollout_cfg.temperature
    with _autocast(run):
        if synced and run.trainer is not None:
            logp, entropy = run.trainer(batch, temperature=temperature, return_entropy=True)
        else:
            logp, entropy = sequence_logprobs(run.policy.model, batch, temperature=temperature, return_entropy=True)
    ref_logp = None
    if run.reference is not None:
        with torch.no_grad():
            ref_logp = sequence_logprobs(run.reference.model, batch, temperature=temperature)
    return batch, adv, logp.float(), entropy.float(), ref_logp


def update_policy(run: Run, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
    """``ppo_epochs`` x ``minibatches`` optimizer steps on one rollout batch; returns their metrics.

    ``batch`` holds this rank's ``B`` trajectories (T tokens); ``advantages`` is (B, T).
    """
    cfg = run.cfg
    B_local = len(batch)
    B = B_local * run.dist.world_size  # the global batch: every rank holds B_local whole-group rows
    offset = run.dist.rank * B_local  # global row of local row 0
    shuffle = step_generator(cfg.seed, run.step, SHUFFLE_STREAM)  # identical on every rank
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    norms, losses = [], []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=shuffle).tolist() if cfg.minibatches > 1 else list(range(B))
        size = B // cfg.minibatches
        for mb in range(cfg.minibatches):
            # This rank's rows of the global mini-batch (maybe none), in the global order.
            rows = [i - offset for i in order[mb * size : (mb + 1) * size] if offset <= i < offset + B_local]
            mask = batch.loss_mask[torch.tensor(rows, dtype=torch.long)]  # (b, T)
            denominator = dp.global_denominator(_loss_denominator(mask, cfg.loss.agg_mode), run.dist)
            run.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            # Every rank runs as many micro-batches as the fullest one (padding: row 0 with its loss times 0);
            # the last one's backward sums the gradients over ranks (DDP).
            micros = _micro_batches(rows, cfg.micro_batch_size)
            for micro, real in dp.micro_steps(run.trainer, micros, [0], run.dist):
                part, adv, logp, entropy, ref_logp = _forward(run, batch, micro, advantages)
                loss, m = policy_loss(
                    logp, part.old_logprobs.to(run.device), adv, part.loss_mask.to(run.device),
                    config=cfg.loss, ref_logp=ref_logp, entropy=entropy, denominator=denominator,
                )
                if not real:
                    (loss * 0.0).backward()
                    continue
                loss.backward()
                total += float(loss.detach())
                tokens = float(part.loss_mask.sum())
                for k in METRIC_KEYS:
                    if k in m:
                        sums[k] = sums.get(k, 0.0) + m[k] * tokens
                        weights[k] = weights.get(k, 0.0) + tokens
            # Each rank's loss is its share of the global loss: summed gradients are the global gradient.
            total = dp.sum_over_ranks({"loss": total}, run.dist)["loss"]
            norm, skipped = apply_update(run.policy.model, run.optimizer, cfg.optim.grad_clip, total)
            run.skipped_updates += int(skipped)
            norms.append(norm)
            losses.append(total)
    lr = run.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():  # after skipped updates torch warns that the optimizer did not step; intended
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        run.scheduler.step()
    sums, weights = _sum_metric_parts(sums, weights, run.dist)
    out = {k: sums[k] / max(weights[k], 1.0) for k in sums}
    finite_norms = [n for n in norms if math.isfinite(n)]
    finite_losses = [v for v in losses if math.isfinite(v)]
    out.update({
        "loss": float(np.mean(finite_losses)) if finite_losses else 0.0,
        "grad_norm": float(np.mean(finite_norms)) if finite_norms else 0.0,
        "lr": lr,
        "optimizer_steps": float(len(norms)),
    })
    return out


METRIC_KEYS = ("clip_frac", "ppo_kl", "entropy", "kl", "ratio_mean")  # token-weighted loss metrics


def _sum_metric_parts(sums: dict[str, float], weights: dict[str, float], info: dp.DistInfo):
    """Token-weighted metric sums and weights over ranks (a rank with no tokens reports no key)."""
    if not info.distributed:
        return sums, weights
    flat = {f"s/{k}": sums.get(k, 0.0) for k in METRIC_KEYS} | {f"w/{k}": weights.get(k, 0.0) for k in METRIC_KEYS}
    total = dp.sum_over_ranks(flat, info)
    present = [k for k in METRIC_KEYS if total[f"w/{k}"] > 0]
    return {k: total[f"s/{k}"] for k in present}, {k: total[f"w/{k}"] for k in present}


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float, loss: float) -> tuple[float, bool]:
    """Clip and step, unless the loss or the gradient norm is not finite; returns (grad norm, skipped).

    A skipped update drops the gradients and leaves the weights and the optimizer's
    moments untouched, so one bad batch cannot poison the run.
    """
    norm = clip_gradients(model, grad_clip)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        return norm, True
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, False


def gradient_variance(run: Run, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
    """Bootstrap variance of the policy gradient projected on a fixed direction (docs/metrics.md).

    ``p_i = ∇l_i · v`` where ``l_i`` is trajectory i's contribution to the policy-gradient
    loss (same denominator as the update, so ``sum_i l_i`` is the batch loss); one
    forward and backward per trajectory; then groups are resampled
    ``bootstrap_resamples`` times. Under data parallelism each rank projects its own
    trajectories and the projections of all ranks are resampled together (the same
    numbers as one process). Shapes: this rank's ``batch`` of B trajectories and advantages (B, T).
    """
    cfg = run.cfg
    params = [p for p in run.policy.model.parameters() if p.requires_grad]
    direction = diagnostics.random_direction(params, cfg.bootstrap_seed)
    denominator = dp.global_denominator(_loss_denominator(batch.loss_mask, cfg.loss.agg_mode), run.dist)
    pg_only = dataclasses.replace(cfg.loss, kl_coef=0.0, entropy_coef=0.0)
    projections = []
    for i in range(len(batch)):
        row, adv, logp, _, _ = _forward(run, batch, [i], advantages, synced=False)
        loss, _ = policy_loss(
            logp, row.old_logprobs.to(run.device), adv, row.loss_mask.to(run.device),
            config=pg_only, denominator=denominator,
        )
        projections.append(diagnostics.projected_gradient(loss, params, direction))
    p = torch.tensor(projections, dtype=torch.float64)  # (B,)
    # Every rank resamples the whole batch's groups (prompt ids made global) with the same generator.
    first, _ = dp.rank_span(cfg.prompts_per_step, run.dist)
    p = dp.gather_concat(p, run.dist)  # (B * W,) in rank order = the single-process order
    group = dp.gather_concat(batch.group.cpu() + first, run.dist)  # (B * W,)
    gen = step_generator(cfg.seed, run.step, BOOTSTRAP_STREAM)
    variance = diagnostics.bootstrap_variance(p, group, n_resamples=cfg.bootstrap_resamples, generator=gen)
    return {"grad_var_bootstrap": variance, "grad_proj": float(p.sum())}


__all__ = ["Collected", "apply_update", "collect", "episode_generators", "gradient_variance", "rl_step", "step_generator",
           "update_policy"]
