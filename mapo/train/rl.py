"""The RL recipe: GRPO and MAPO over multi-turn zoom-in rollouts.

Top to bottom: ``setup`` (data, policy, verifier, optimiser, run directory,
resume) -> ``loop`` (per step: sample prompts -> rollout G per prompt -> outcome
rewards -> semantic scores of every observation (one batched verifier call) ->
the registered advantage estimator -> clipped policy loss over ``ppo_epochs`` x
``minibatches`` optimizer steps with gradient accumulation -> metrics, held-out
evaluation, checkpoint) -> ``cleanup`` (final checkpoint, policy in
``RUN_DIR/final``, ``RUN_DIR/summary.json``). The maths lives in the library:
:mod:`mapo.advantage`, :mod:`mapo.loss`, :mod:`mapo.train.diagnostics`.

Determinism and resume. Step ``t`` draws its prompts from a seeded permutation
(a pure function of the cursor ``t * prompts_per_step``), samples episode ``m``
of its ``p``-th prompt with its own ``torch.Generator`` seeded by
``(seed, t, p, m)`` and shuffles its mini-batches with another generator seeded
by ``(seed, t)``, so a checkpoint (model, optimizer, scheduler, RNG states, step,
cursor) resumes to the same numbers as an uninterrupted run
(``tests/test_train.py`` kills a run with SIGKILL and checks this), and the
numbers do not depend on how many data-parallel ranks share the prompts. The
verifier's image-embedding cache is off so that scores never depend on what an
earlier step happened to cache.

Choices and departures (the MAPO paper gives none of these):

- ``old_logp`` of every PPO epoch is the rollout's sampling log-prob (the rollout
  guarantees it equals the training forward within 1e-4), as in PPO.
- The loss denominator of each optimizer step is the count over that step's whole
  mini-batch (tokens for ``token-mean``, non-empty sequences for ``seq-mean-*``),
  so gradient accumulation over micro-batches gives exactly the mini-batch loss.
- A non-finite loss or gradient norm skips the optimizer step (gradients are
  dropped, weights and optimizer moments untouched) and is counted in
  ``skipped_updates``; the learning-rate schedule still advances.
- The bootstrap gradient-variance estimate (``docs/metrics.md``) is computed at
  the rollout parameters, before the update, on the policy-gradient term only.
- The KL reference is the starting policy (``policy``), loaded only when
  ``loss.kl_coef > 0``.
- A training or held-out sample that cannot be played (an image that does not
  decode, more than 26 options) is skipped and replaced by the next playable one
  (:mod:`mapo.train.rl_data`), reported on stderr and in
  ``RUN_DIR/skipped_rows.jsonl``; images that can be padded or upscaled into the
  policy's pixel range are (:mod:`mapo.data.prepare`).

Data parallel (``torchrun --nproc-per-node W -m mapo train``,
:mod:`mapo.train.distributed`): each rank rolls out ``prompts_per_step / W``
whole groups, the loss denominators are global, gradients are summed over ranks
before clipping, so one step updates the weights as one process would. Rank 0
alone logs, evaluates and checkpoints; a checkpoint resumes with any ``W`` that
divides ``prompts_per_step``. The per-step rollout metrics (rewards, rates,
semantic and advantage statistics, times) are the means of each rank's values,
weighted by its trajectories (exact for means over trajectories; for standard
deviations, variances and per-observation or per-token rates, a mean of per-rank
values; ``verifier_pairs`` is summed); the update metrics and the bootstrap are
computed over the whole batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed

from mapo import semantic
from mapo.advantage import AdvantageConfig, estimator_facts, get_estimator
from mapo.config import knob, to_dict
from mapo.data.prepare import pixel_range, prepare_sample
from mapo.loss import LossConfig, policy_loss
from mapo.progress import StepProgress, say
from mapo.protocol import note_to_stderr, protocol_for_policy
from mapo.reward import RewardConfig, outcome_reward
from mapo.rollout import RolloutConfig, collate, rollout, sequence_logprobs
from mapo.train import diagnostics
from mapo.train.rl_data import Data, RLDataConfig, load_data, shuffled_index  # noqa: F401 - re-exported
from mapo.train import distributed as dp
from mapo.train.common import (
    MetricsLogger,
    OptimConfig,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    latest_checkpoint,
    load_trainer_state,
    lock_run_dir,
    prepare_run_dir,
    save_checkpoint,
    seed_everything,
)

RUN_KIND = "rl"
# Keys that may change between a run and its resume (they do not change what is trained).
RESUMABLE_KEYS = ("log_every", "eval_every", "save_every", "keep_last", "tensorboard", "wandb", "threads")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RLConfig:
    """``mapo train``: GRPO / MAPO on multi-turn zoom-in rollouts."""

    steps: int = knob(200, "optimizer steps of the outer loop (one rollout batch each)")
    prompts_per_step: int = knob(8, "prompts (groups) per step; batch = prompts_per_step * rollout.group_size trajectories")
    seed: int = knob(0, "seed of the run: prompt order, rollout sampling, mini-batch shuffling")
    policy: str | None = knob(None, "starting policy: a local checkpoint directory (e.g. runs/sft/final) or 'default'")
    policy_dtype: str = knob("auto", "dtype to load the policy in: auto (the checkpoint's), float32, bfloat16")
    device: str = knob("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    amp: Literal["off", "bf16"] = knob("off", "mixed precision of the training forward: off or bf16 (autocast)")
    verifier: str | None = knob(None, "semantic verifier: a local CLIP directory; required by mapo, mapo_gated, reward_mix")
    verifier_batch_size: int = knob(64, "pairs per verifier forward")
    semantic_target: Literal["description", "label", "both"] = knob(
        "description", "what is scored against each crop: the description that follows it (paper), the tool "
        "call's label, or the mean of both"
    )
    tool_from_data: bool = knob(True, "with synthetic samples, use the tool budgets they were made for, not rollout.tool")
    rollout: RolloutConfig = knob(factory=RolloutConfig, help="sampling, budgets and group size G")
    reward: RewardConfig = knob(factory=RewardConfig, help="outcome reward weights")
    advantage: AdvantageConfig = knob(factory=AdvantageConfig, help="advantage estimator (--algo sets estimator)")
    loss: LossConfig = knob(factory=LossConfig, help="clipped policy loss, KL to the starting policy, entropy bonus")
    optim: OptimConfig = knob(factory=OptimConfig, help="AdamW, schedule and gradient clipping")
    ppo_epochs: int = knob(1, "passes over each rollout batch")
    minibatches: int = knob(1, "optimizer steps per epoch; the batch is split into this many equal mini-batches")
    micro_batch_size: int = knob(8, "trajectories per forward/backward (gradient accumulation within a mini-batch)")
    bootstrap_every: int = knob(1, "estimate the gradient variance every this many steps (0 = off)")
    bootstrap_resamples: int = knob(64, "bootstrap replicates M of the gradient-variance estimate")
    bootstrap_seed: int = knob(20_240_406, "seed of the direction v; keep it fixed so algorithms compare")
    eval_every: int = knob(10, "greedy held-out evaluation every this many steps (0 = only at the end)")
    log_every: int = knob(1, "write training metrics every this many steps")
    save_every: int = knob(10, "checkpoint every this many steps (0 = only at the end)")
    keep_last: int = knob(2, "checkpoints kept on disk")
    tensorboard: bool = knob(True, "also write TensorBoard event files")
    wandb: str | None = knob(None, "also log metrics to this Weights & Biases project (needs the wandb package; "
                             "WANDB_MODE=offline works without a network)")
    threads: int = knob(0, "torch CPU threads (0 = torch's default)")
    data: RLDataConfig = knob(factory=RLDataConfig, help="training prompts and held-out set")

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "ppo_epochs", "minibatches", "micro_batch_size", "log_every",
                     "verifier_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bootstrap_every", "eval_every", "save_every", "threads", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.policy:
            raise ValueError("policy is required: a checkpoint directory (e.g. runs/sft/final from `mapo sft`) or 'default'")
        batch = self.prompts_per_step * self.rollout.group_size
        if batch % self.minibatches:
            raise ValueError(
                f"minibatches ({self.minibatches}) must divide the batch of prompts_per_step * group_size = {batch} "
                "trajectories, so every optimizer step sees the same number of trajectories"
            )
        if self.verifier is None and needs_semantic(self.advantage):
            raise ValueError(
                f"advantage estimator {self.advantage.estimator!r} needs semantic scores: set verifier to a local CLIP "
                "directory (e.g. one written by `mapo verifier train`), or use --algo grpo"
            )
        if self.bootstrap_every and self.bootstrap_resamples < 2:
            raise ValueError(f"bootstrap_resamples must be >= 2 for a variance, got {self.bootstrap_resamples}")
        if self.rollout.greedy:
            raise ValueError("rollout.greedy must be false for training: the policy gradient needs sampled actions")
        if self.policy_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"policy_dtype must be auto, float32, bfloat16 or float16, got {self.policy_dtype!r}")


def needs_semantic(advantage: AdvantageConfig) -> bool:
    """Whether the configured estimator refuses to run without semantic scores (a fact of its registration)."""
    return estimator_facts(advantage.estimator).needs_semantic


# ----------------------------------------------------------------------------- setup


@dataclass
class Run:
    """Everything the loop touches."""

    cfg: RLConfig
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


def resolve_device(name: str, info: dp.DistInfo | None = None) -> torch.device:
    """The run's device; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    info = dp.DistInfo() if info is None else info
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available (use device: cpu)")
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
    path = Path(policy)
    if not path.is_dir():
        raise ValueError(f"policy {policy!r} is not a directory (expected a local checkpoint, e.g. runs/sft/final)")
    missing = missing_files(path)
    if missing:
        raise ValueError(f"policy {policy!r} is not a policy checkpoint directory: missing {', '.join(missing)}")


def load_start_policy(cfg: RLConfig, device: torch.device):
    from mapo.policy import load_policy

    if cfg.policy == "default":
        import mapo.policy

        policy = mapo.policy.load_default()
        policy.model.to(device)
        return policy
    return load_policy(cfg.policy, dtype=cfg.policy_dtype, device=device)


def setup(cfg: RLConfig, run_dir: str | Path, resume: bool, info: dp.DistInfo | None = None) -> Run:
    """Check every input, then build the run (or restore it from the newest checkpoint).

    ``info``: this rank under torchrun (default: a single process). A multi-rank ``info``
    joins the process group here (:func:`mapo.train.distributed.init_distributed`) unless
    the caller already did.
    """
    from mapo.policy import load_policy
    from mapo.verifier.clip import check_model_dir, load_verifier

    info = dp.DistInfo() if info is None else info
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dp.check_batch_split(cfg.prompts_per_step, cfg.rollout.group_size, info.world_size)
    device = resolve_device(cfg.device, info)
    dp.init_distributed(device, info)
    check_policy_path(cfg.policy)
    if cfg.verifier is not None:
        check_model_dir(cfg.verifier)
    data = load_data(cfg.data)
    ckpt = None
    if resume:
        if not (run_dir / "run.json").is_file():
            raise ValueError(f"cannot resume {run_dir}: it is not a run directory (no run.json)")
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ValueError(f"cannot resume {run_dir}: it holds no complete checkpoint")
    dp.run_on_main(lambda: prepare_run_dir(run_dir, cfg, kind=RUN_KIND, resume=resume, ignore=RESUMABLE_KEYS), info)
    seed_everything(cfg.seed)

    policy = load_policy(ckpt / "model", dtype=cfg.policy_dtype, device=device) if ckpt else load_start_policy(cfg, device)
    policy.model.train()
    dp.broadcast_parameters(policy.model, info)  # replicas start identical whatever each rank loaded
    reference = None
    if cfg.loss.kl_coef > 0:
        reference = load_start_policy(cfg, device)
        reference.model.eval().requires_grad_(False)
    # No embedding cache: a score must not depend on which batch first embedded its crop (resume exactness).
    verifier = load_verifier(cfg.verifier, device=device, cache_images=False) if cfg.verifier else None
    # Prompt the policy as it was trained (its mapo_protocol.json) unless the config sets a protocol;
    # its checkpoints record the protocol used here, so a resumed run resolves the same way.
    protocol = protocol_for_policy(cfg.rollout.protocol, policy.protocol, on_conflict=note_to_stderr if info.is_main else None)
    policy.protocol = protocol
    rollout_cfg = dataclasses.replace(cfg.rollout, protocol=protocol)
    first = data.prompts(0, 1)[0]
    if cfg.tool_from_data and first.task is not None:  # a generated sample: the budgets its task was made for
        from mapo.data.task import tool_config_for

        rollout_cfg = dataclasses.replace(rollout_cfg, tool=tool_config_for(first))
    # One sample that cannot be played (truncated image, >26 options) is skipped, not fatal (mapo.train.rl_data).
    data.prepare = functools.partial(prepare_sample, tool=rollout_cfg.tool, pixels=pixel_range(policy.processor))
    data.prepare_heldout()
    optimizer = build_optimizer(policy.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    logger = (MetricsLogger(run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb, config=to_dict(cfg)) if info.is_main
              else dp.NullLogger())
    run = Run(cfg, run_dir, device, data, policy, reference, verifier, rollout_cfg, optimizer, scheduler, logger, dist=info)
    if ckpt is not None:
        state = load_trainer_state(ckpt, optimizer, scheduler)
        run.step, run.skipped_updates = int(state["step"]), int(state.get("skipped_updates", 0))
        logger.truncate_after(run.step)
    run.reported = set(_skipped_ids(run_dir / SKIPPED_FILE))
    return run


SKIPPED_FILE = "skipped_rows.jsonl"  # one {"file", "row", "id", "reason"} per training sample that cannot be played


def _skipped_ids(path: Path) -> list[str]:
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


# ----------------------------------------------------------------------------- one step


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


ROLLOUT_STREAM, SHUFFLE_STREAM, BOOTSTRAP_STREAM = 0, 1, 2


@dataclass
class Collected:
    """One step's rollout batch, scored: what the update and the diagnostics read."""

    trajectories: list  # B mapo.rollout.Trajectory of this rank, grouped by prompt
    group: torch.Tensor  # (B,) long prompt id, local to this rank (0 .. prompts on this rank - 1)
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
    metrics = diagnostics.trajectory_metrics(trajectories, rewards)
    scores = None  # (B, K) s_{i,k}, or None without a verifier
    if run.verifier is not None:
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
        outcome, batch["group"], batch["segment_ids"], scores, config=cfg.advantage
    )  # (B, T)
    tool_mask = diagnostics.tool_segment_mask(trajectories, batch["segment_ids"])
    metrics.update(diagnostics.advantage_metrics(advantages, batch["loss_mask"], tool_mask))
    metrics.update(diagnostics.group_signal_metrics(outcome, batch["group"]))
    metrics.update({"time_rollout": t_rollout - started, "time_verifier": t_verifier - t_rollout})
    metrics = dp.mean_metrics(metrics, weight=len(trajectories), info=run.dist, summed=("verifier_pairs",))
    return Collected(trajectories, batch["group"], advantages, metrics)


def rl_step(run: Run, forced_turns: Callable | None = None) -> dict[str, float]:
    """One step: collect (rollout, rewards, semantic scores, advantages), bootstrap, update. Returns its metrics."""
    cfg = run.cfg
    started = time.perf_counter()
    got = collect(run, forced_turns)
    metrics = got.metrics
    t_collected = time.perf_counter()
    if cfg.bootstrap_every and run.step % cfg.bootstrap_every == 0:
        metrics.update(gradient_variance(run, got.trajectories, got.advantages, got.group))
    t_bootstrap = time.perf_counter()
    metrics.update(update_policy(run, got.trajectories, got.advantages))
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
    """The whole mini-batch's count that :func:`mapo.loss.agg_loss` would use; mask (B, T)."""
    if agg_mode == "token-mean":
        return float(mask.sum())
    return float((mask.sum(dim=1) > 0).sum())


def _forward(run: Run, trajectories: Sequence[Any], rows: list[int], advantages: torch.Tensor):
    """Collate ``rows`` and return (batch, advantages (b, T'), logp (b, T'), entropy, ref_logp or None)."""
    batch = collate([trajectories[i] for i in rows], run.policy)
    T = batch["input_ids"].shape[1]  # right padding: the first T columns of the full batch
    adv = advantages[rows, :T].to(run.device)  # (b, T')
    temperature = run.rollout_cfg.temperature
    with _autocast(run):
        logp, entropy = sequence_logprobs(run.policy.model, batch, temperature=temperature, return_entropy=True)
    ref_logp = None
    if run.reference is not None:
        with torch.no_grad():
            ref_logp = sequence_logprobs(run.reference.model, batch, temperature=temperature)
    return batch, adv, logp.float(), entropy.float(), ref_logp


def update_policy(run: Run, trajectories: Sequence[Any], advantages: torch.Tensor) -> dict[str, float]:
    """``ppo_epochs`` x ``minibatches`` optimizer steps on one rollout batch; returns their metrics.

    ``advantages`` is (B, T) for the collated batch of ``trajectories``.
    """
    cfg = run.cfg
    B_local = len(trajectories)
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
            mask = _rows_mask(trajectories, rows, advantages.shape[1])  # (b, T)
            denominator = dp.global_denominator(_loss_denominator(mask, cfg.loss.agg_mode), run.dist)
            run.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for micro in _micro_batches(rows, cfg.micro_batch_size):
                batch, adv, logp, entropy, ref_logp = _forward(run, trajectories, micro, advantages)
                loss, m = policy_loss(
                    logp, batch["old_logprobs"].to(run.device), adv, batch["loss_mask"].to(run.device),
                    config=cfg.loss, ref_logp=ref_logp, entropy=entropy, denominator=denominator,
                )
                loss.backward()
                total += float(loss.detach())
                tokens = float(batch["loss_mask"].sum())
                for k in METRIC_KEYS:
                    if k in m:
                        sums[k] = sums.get(k, 0.0) + m[k] * tokens
                        weights[k] = weights.get(k, 0.0) + tokens
            # Each rank's loss is its share of the global loss: summed gradients are the global gradient.
            dp.allreduce_gradients(run.policy.model, run.dist)
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


def _rows_mask(trajectories: Sequence[Any], rows: Sequence[int], length: int) -> torch.Tensor:
    """(len(rows), length) bool loss masks of ``trajectories[rows]``, right-padded; (0, length) for no rows."""
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for r, i in enumerate(rows):
        mask[r, : len(trajectories[i].loss_mask)] = trajectories[i].loss_mask
    return mask


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


# ----------------------------------------------------------------------------- gradient variance


def gradient_variance(run: Run, trajectories: Sequence[Any], advantages: torch.Tensor, group: torch.Tensor) -> dict[str, float]:
    """Bootstrap variance of the policy gradient projected on a fixed direction (docs/metrics.md).

    ``p_i = ∇l_i · v`` where ``l_i`` is trajectory i's contribution to the policy-gradient
    loss (same denominator as the update, so ``sum_i l_i`` is the batch loss); one
    forward and backward per trajectory; then groups are resampled
    ``bootstrap_resamples`` times. Under data parallelism each rank projects its own
    trajectories and the projections of all ranks are resampled together (the same
    numbers as one process). Shapes: advantages (B, T), group (B,), this rank's.
    """
    cfg = run.cfg
    params = [p for p in run.policy.model.parameters() if p.requires_grad]
    direction = diagnostics.random_direction(params, cfg.bootstrap_seed)
    mask = _rows_mask(trajectories, range(len(trajectories)), advantages.shape[1])  # (B, T)
    denominator = dp.global_denominator(_loss_denominator(mask, cfg.loss.agg_mode), run.dist)
    pg_only = dataclasses.replace(cfg.loss, kl_coef=0.0, entropy_coef=0.0)
    projections = []
    for i in range(len(trajectories)):
        batch, adv, logp, _, _ = _forward(run, trajectories, [i], advantages)
        loss, _ = policy_loss(
            logp, batch["old_logprobs"].to(run.device), adv, batch["loss_mask"].to(run.device),
            config=pg_only, denominator=denominator,
        )
        projections.append(diagnostics.projected_gradient(loss, params, direction))
    p = torch.tensor(projections, dtype=torch.float64)  # (B,)
    # Every rank resamples the whole batch's groups (prompt ids made global) with the same generator.
    first, _ = dp.rank_span(cfg.prompts_per_step, run.dist)
    p = dp.gather_concat(p, run.dist)  # (B * W,) in rank order = the single-process order
    group = dp.gather_concat(group.cpu() + first, run.dist)  # (B * W,)
    gen = step_generator(cfg.seed, run.step, BOOTSTRAP_STREAM)
    variance = diagnostics.bootstrap_variance(p, group, n_resamples=cfg.bootstrap_resamples, generator=gen)
    return {"grad_var_bootstrap": variance, "grad_proj": float(p.sum())}


# ----------------------------------------------------------------------------- evaluation


def evaluate(run: Run) -> dict[str, float]:
    """Greedy rollouts (G = 1) on the held-out set: accuracy, hit rate, IoU, semantic mean, ... as ``eval/*``."""
    samples = run.data.heldout
    if not samples:
        return {}
    rc = dataclasses.replace(
        run.rollout_cfg, group_size=1, greedy=True, batch_size=max(1, min(run.rollout_cfg.batch_size, len(samples)))
    )
    trajectories = rollout(samples, run.policy, rc)
    metrics = diagnostics.trajectory_metrics(trajectories, [outcome_reward(t, run.cfg.reward) for t in trajectories])
    if run.verifier is not None:
        sem = semantic.semantic_scores(
            trajectories, run.verifier, target=run.cfg.semantic_target,
            max_description_chars=rc.protocol.max_description_chars, batch_size=run.cfg.verifier_batch_size,
        )
        metrics.update(semantic.semantic_metrics(sem))
    keep = ("reward_mean", "accuracy", "hit_rate", "iou_mean", "semantic_mean", "tool_call_rate", "invalid_box_rate",
            "turns_mean", "description_missing_rate", "answer_rate")
    return {f"eval/{k}": metrics[k] for k in keep if k in metrics} | {"eval/n": float(len(trajectories))}


# ----------------------------------------------------------------------------- the recipe


def _eval_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items() if k != "eval/n")


def _save(run: Run) -> None:
    save_checkpoint(
        run.run_dir, run.step, save_model=run.policy.save, optimizer=run.optimizer, scheduler=run.scheduler,
        state={"cursor": run.step * run.cfg.prompts_per_step, "skipped_updates": run.skipped_updates},
        keep_last=run.cfg.keep_last,
    )


def train(
    config: RLConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | str = True,
    forced_turns: Callable[[int, int, int], str | None] | None = None,
) -> dict[str, Any]:
    """Run ``mapo train``: returns a summary (also written to ``RUN_DIR/summary.json``).

    Args:
        config: the run's :class:`RLConfig`.
        run_dir: a new or empty directory; with ``resume`` the directory of the run to continue
            (same config up to :data:`RESUMABLE_KEYS`).
        progress: ``auto`` / True (a bar on a terminal, else one plain line per step), ``lines``,
            or ``off`` / False (:mod:`mapo.progress`).
        forced_turns: test/demo hook passed to every *training* rollout
            (``mapo.rollout.rollout``'s ``forced_turns``); evaluation always samples greedily.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every rank calls this; it joins the
    process group unless the caller already did, and leaves it when it joined it. Only
    rank 0 writes; every rank returns a summary (``eval`` is empty on the others).

    Returns:
        ``{"run_dir", "steps", "skipped_updates", "train": last training metrics,
        "eval": final held-out metrics, "wall_s"}``.
    """
    if not isinstance(config, RLConfig):
        raise ValueError(f"config must be an RLConfig, got {type(config).__name__}")
    started = time.perf_counter()
    info = dp.dist_info_from_env()
    owns_group = info.distributed and not torch.distributed.is_initialized()  # leave a caller's group alone
    # Rank 0 alone writes, so it alone holds the run-directory lock (a second run on it is refused).
    lock = lock_run_dir(run_dir, create=not resume) if info.is_main else None
    try:
        return _train(config, run_dir, resume, progress, forced_turns, info, started)
    finally:
        if lock is not None:
            lock.release()
        if owns_group:
            dp.cleanup(info)


def _train(config: RLConfig, run_dir: str | Path, resume: bool, progress: bool | str, forced_turns: Callable | None,
           info: dp.DistInfo, started: float) -> dict[str, Any]:
    run = setup(config, run_dir, resume, info)
    cfg, last, main = run.cfg, {}, info.is_main
    summary_path = run.run_dir / "summary.json"
    if resume and main:
        say(f"resuming {run.run_dir} from step {run.step} of {cfg.steps}", progress)
    if run.step >= cfg.steps and summary_path.is_file():  # resuming a run that already finished
        run.logger.close()
        return json.loads(summary_path.read_text(encoding="utf-8"))
    try:
        with StepProgress(f"rl {cfg.advantage.estimator}", cfg.steps, start=run.step,
                          mode=progress if main else "off") as bar:
            report_skipped(run)  # held-out samples that cannot be played
            while run.step < cfg.steps:
                last = rl_step(run, forced_turns)
                report_skipped(run)
                run.step += 1
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    run.logger.log(run.step, last)
                if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps and main:
                    run.last_eval = evaluate(run)  # rank 0 alone; the others wait at the next step's first collective
                    run.logger.log(run.step, run.last_eval)
                    bar.note(f"rl eval step {run.step}: " + _eval_text(run.last_eval))
                if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.steps and main:
                    _save(run)
                bar.update(run.step, {"reward": last["reward_mean"], "acc": last["accuracy"],
                                      "tool": last["tool_call_rate"]})
        if main:
            _save(run)
            run.policy.save(run.run_dir / "final")
            run.last_eval = evaluate(run)
            if run.last_eval:
                run.logger.log(run.step, run.last_eval)
    finally:
        run.logger.close()
    summary = {
        "run_dir": str(run.run_dir), "steps": run.step, "skipped_updates": run.skipped_updates,
        "train": last, "eval": run.last_eval, "skipped_rows": len(run.reported),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    if main:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    dp.barrier(run.dist)  # every rank returns once rank 0's files are complete
    return summary


def config_from_run_dir(run_dir: str | Path) -> dict:
    """The YAML mapping a run was started with (``RUN_DIR/config.yaml``)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: no config.yaml there (not a `mapo train` run directory)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


__all__ = ["RLConfig", "RLDataConfig", "apply_update", "evaluate", "needs_semantic", "train", "config_from_run_dir"]
