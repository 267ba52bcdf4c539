"""The RL recipe: GRPO and MAPO over multi-turn zoom-in rollouts.

Top to bottom: ``setup`` (run directory and resume, then one call per job: the data
(:mod:`mapo.train.rl_data`), the models (:mod:`mapo.train.rl_model`), the optimiser
(:mod:`mapo.train.optim`)) -> ``loop`` (per step: sample prompts -> rollout G per prompt -> outcome
rewards -> semantic scores of every observation (one batched verifier call) ->
the registered advantage estimator -> clipped policy loss over ``ppo_epochs`` x
``minibatches`` optimizer steps with gradient accumulation -> metrics, held-out
evaluation, checkpoint) -> ``cleanup`` (final checkpoint, policy in
``RUN_DIR/final``, ``RUN_DIR/summary.json``). The maths lives in the library:
:mod:`mapo.algo.advantage`, :mod:`mapo.algo.loss`, :mod:`mapo.train.diagnostics`; one step in
:mod:`mapo.train.rl_step`, the held-out evaluation in :mod:`mapo.train.rl_eval`, the
run's state and checkpoints in :mod:`mapo.train.rl_run`.

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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed

from mapo.algo.advantage import AdvantageConfig, estimator_facts, semantic_estimators
from mapo.core.config import knob, to_dict
from mapo.algo.loss import LossConfig
from mapo.core.progress import StepProgress, say
from mapo.algo.reward import RewardConfig
from mapo.engine.rollout import RolloutConfig
from mapo.train import distributed as dp
from mapo.core.run_dir import atomic_write_text, lock_run_dir, prepare_run_dir, read_json_file
from mapo.train.optim import OptimConfig, build_optimizer, build_scheduler
from mapo.train.metrics_log import MetricsLogger
from mapo.train.checkpoint import latest_checkpoint, load_trainer_state, seed_everything
from mapo.train.finetune import FinetuneConfig
from mapo.train.interrupt import StopOnInterrupt, TrainingInterrupted, resume_command
from mapo.train.rl_data import RLDataConfig, fit_data_to_policy, load_data, require_target_boxes
from mapo.train.rl_eval import eval_text, evaluate
from mapo.train.rl_model import check_policy_path, checked_verifier_dir, load_models, resolve_device
from mapo.train.rl_run import SKIPPED_FILE, Run, report_skipped, save, skipped_ids
from mapo.train.rl_step import rl_step

RUN_KIND = "rl"
# Keys that may change between a run and its resume (they do not change what is trained). ``steps`` may only
# grow (:func:`extend_steps`): the steps already taken, and the learning-rate schedule, stay as they were.
RESUMABLE_KEYS = ("log_every", "eval_every", "save_every", "keep_last", "tensorboard", "wandb", "threads",
                  "save_rollouts_every", "save_rollouts_groups", "steps")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RLConfig:
    """``mapo train``: GRPO / MAPO on multi-turn zoom-in rollouts."""

    steps: int = knob(200, "optimizer steps of the outer loop (one rollout batch each)")
    prompts_per_step: int = knob(8, "prompts (groups) per step; batch = prompts_per_step * rollout.group_size trajectories")
    seed: int = knob(0, "seed of the run: prompt order, rollout sampling, mini-batch shuffling")
    policy: str | None = knob(
        None, "starting policy: a local checkpoint directory (e.g. runs/sft/final), 'default' (the shipped warm start) "
        "or shipped:NAME (mapo/assets/NAME, wherever mapo is installed)")
    policy_dtype: str = knob("auto", "dtype to load the policy in: auto (finetune.method full: float32 master "
                                     "weights; lora: the checkpoint's own), float32, bfloat16")
    device: str = knob("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    amp: Literal["off", "bf16"] = knob("off", "mixed precision of the training forward: off or bf16 (autocast)")
    finetune: FinetuneConfig = knob(factory=FinetuneConfig, help="full fine-tuning or LoRA; gradient checkpointing")
    verifier: str | None = knob(
        None, "semantic verifier: a local CLIP directory, 'default' or mapo/assets/verifier (the shipped one, wherever "
        f"mapo is installed); required by {', '.join(semantic_estimators())}")
    verifier_batch_size: int = knob(64, "pairs per verifier forward")
    semantic_target: Literal["description", "label", "both", "oracle_iou"] = knob(
        "description", "what is scored against each crop: the description that follows it (paper), the tool "
        "call's label, the mean of both, or oracle_iou (no verifier: the crop's IoU with the target box, a bound "
        "that needs box labels)"
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
    save_rollouts_every: int = knob(10, "save sampled training rollouts (crops, s_{i,k}, per-turn advantages) at step 1 "
                                    "and every this many steps into RUN_DIR/rollouts/ for `mapo report` (0 = never)")
    save_rollouts_groups: int = knob(2, "groups (prompts, G trajectories each) saved per such step")
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
        for name in ("bootstrap_every", "eval_every", "save_every", "threads", "keep_last", "save_rollouts_every",
                     "save_rollouts_groups"):
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
        if self.verifier is None and needs_semantic(self.advantage) and needs_verifier(self.semantic_target):
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


def needs_verifier(semantic_target: str) -> bool:
    """Whether ``semantic_target`` is scored by a verifier (``oracle_iou`` is not: it reads target boxes)."""
    from mapo.algo.semantic import needs_verifier as _needs

    return _needs(semantic_target)


def needs_semantic(advantage: AdvantageConfig) -> bool:
    """Whether the configured estimator refuses to run without semantic scores (a fact of its registration)."""
    return estimator_facts(advantage.estimator).needs_semantic


# ----------------------------------------------------------------------------- setup


def setup(cfg: RLConfig, run_dir: str | Path, resume: bool, info: dp.DistInfo | None = None) -> Run:
    """Check every input, then build the run (or restore it from the newest checkpoint).

    ``info``: this rank under torchrun (default: a single process). A multi-rank ``info``
    joins the process group here (:func:`mapo.train.distributed.init_distributed`) unless
    the caller already did.
    """
    info = dp.DistInfo() if info is None else info
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dp.check_batch_split(cfg.prompts_per_step, cfg.rollout.group_size, info.world_size)
    device = resolve_device(cfg.device, info)
    dp.init_distributed(device, info)
    # Inputs first: a wrong path or unusable data fails before anything is written.
    check_policy_path(cfg.policy)
    verifier_dir = checked_verifier_dir(cfg.verifier)
    data = load_data(cfg.data)
    if not needs_verifier(cfg.semantic_target):
        require_target_boxes(data)  # the oracle scores crops against target boxes: refuse data without them now
    # The run directory: claimed, or resumed from its newest checkpoint.
    ckpt = None
    if resume:
        if not (run_dir / "run.json").is_file():
            raise ValueError(f"cannot resume {run_dir}: it is not a run directory (no run.json)")
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ValueError(f"cannot resume {run_dir}: it holds no complete checkpoint")
    dp.run_on_main(lambda: prepare_run_dir(run_dir, cfg, kind=RUN_KIND, resume=resume, ignore=RESUMABLE_KEYS), info)
    horizon = dp.run_on_main(lambda: extend_steps(run_dir, ckpt, cfg.steps), info) if ckpt else cfg.steps
    horizon = dp.broadcast_object(horizon, info)
    seed_everything(cfg.seed)
    # One call per job, in this order (the models consume the seeded RNG first).
    models = load_models(cfg, ckpt, device, verifier_dir, info)
    rollout_cfg = fit_data_to_policy(data, cfg.tool_from_data, models.rollout_cfg, models.policy)
    optimizer = build_optimizer(models.policy.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, horizon)
    logger = (MetricsLogger(run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb, config=to_dict(cfg)) if info.is_main
              else dp.NullLogger())
    run = Run(cfg, run_dir, device, data, models.policy, models.reference, models.verifier, rollout_cfg, optimizer,
              scheduler, logger, dist=info, schedule_steps=horizon, trainer=models.trainer)
    if ckpt is not None:
        state = load_trainer_state(ckpt, optimizer, scheduler)
        run.step, run.skipped_updates = int(state["step"]), int(state.get("skipped_updates", 0))
        logger.truncate_after(run.step)
    run.reported = set(skipped_ids(run_dir / SKIPPED_FILE))
    return run


def extend_steps(run_dir: Path, ckpt: Path, steps: int) -> int:
    """Check a resume's ``steps`` against checkpoint ``ckpt``, record a raised one; return the schedule horizon.

    ``steps`` may be raised on resume (``mapo train --resume RUN_DIR steps=400``), never set below the
    checkpoint's step. A raised value is written to ``RUN_DIR/config.yaml`` (a later plain ``--resume``
    continues to it). The learning-rate schedule keeps the horizon the run started with (recorded in the
    checkpoint as ``schedule_steps``), so the steps already taken keep their rates and the added steps run at the
    schedule's final rate (``optim.min_lr_ratio * optim.lr`` for cosine and linear).
    """
    import yaml

    state = read_json_file(ckpt / "state.json")
    done = int(state["step"])
    saved = config_from_run_dir(run_dir)
    before = int(saved.get("steps", steps))
    if steps < done:
        raise ValueError(f"steps={steps} is below the {done} steps {run_dir} has already taken: --resume may raise "
                         f"steps (e.g. steps={max(before, done) * 2}), not lower them")
    if steps != before:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump({**saved, "steps": steps}, sort_keys=False))
        say(f"{run_dir}: steps {before} -> {steps}; the learning-rate schedule keeps its horizon of "
            f"{int(state.get('schedule_steps', before))} steps", True)
    return int(state.get("schedule_steps", before))


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
            or ``off`` / False (:mod:`mapo.core.progress`).
        forced_turns: test/demo hook passed to every *training* rollout
            (``mapo.engine.rollout.rollout``'s ``forced_turns``); evaluation always samples greedily.

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
        with StopOnInterrupt() as stop, StepProgress(f"rl {cfg.advantage.estimator}", cfg.steps, start=run.step,
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
                    bar.note(f"rl eval step {run.step}: " + eval_text(run.last_eval))
                periodic = cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.steps
                if periodic and main:
                    save(run)
                bar.update(run.step, {"reward": last["reward_mean"], "acc": last["accuracy"],
                                      "tool": last["tool_call_rate"]})
                if run.step < cfg.steps and stop.requested(info.distributed):  # Ctrl-C: checkpoint, then stop
                    if main and not periodic:
                        save(run)
                    dp.barrier(info)
                    raise TrainingInterrupted(run.run_dir, run.step, cfg.steps,
                                              resume_command(run.run_dir, info.world_size))
        if main:
            save(run)
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
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"cannot resume {run_dir}: no config.yaml there (not a `mapo train` run directory)")
    from mapo.core.config import _read_text, load_yaml

    data = load_yaml(_read_text(path), str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged: it must hold a mapping")
    return data


__all__ = ["RLConfig", "evaluate", "needs_semantic", "needs_verifier", "train",
           "config_from_run_dir"]

