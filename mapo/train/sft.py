"""SFT warm start: supervised training on oracle transcripts of the synthetic task, or on your own
conversations (``data.source``: an eval's ``predictions.jsonl`` or an SFT parquet, :mod:`mapo.train.sft_own`).

Recipe, top to bottom: ``setup`` (policy, optimiser, run directory, resume, token classes) ->
``loop`` (batch of oracle transcripts -> masked next-token loss -> AdamW step ->
metrics / eval / checkpoint) -> ``cleanup`` (final policy in ``RUN_DIR/final/``,
held-out evaluation in ``RUN_DIR/eval.json``).

The library does the rest: :mod:`mapo.train.sft_data` builds the transcripts (a pure function
of the data cursor: resume needs only the cursor; ``n_train = 0`` draws a fresh sample for every
example, ``n_train > 0`` cycles over that many, reshuffled each epoch; held-out samples use
``eval.seed``), batches them and masks the labels to the assistant turns (the model learns to
end its turn; prompt, observations with their image tokens, and padding are out of the loss);
:mod:`mapo.train.sft_metrics` holds the loss, its token-class weights and the held-out metrics.
The global image is resized to the view exactly as the rollout does (``tools.view_size``,
bicubic). ``data.localize_only`` cuts each transcript after the first assistant turn (the first
zoom), for a localisation-only stage (docs/warmstart.md, "Probe").

Departures / guesses (the MAPO paper does not describe its warm start):
the oracle's templated ``<think>`` texts, the jitter / wrong-first-zoom
recovery examples, and all hyper-parameters are ours.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mapo.core.config import knob, to_dict
from mapo.core.progress import StepProgress, say
from mapo.agent.protocol import ProtocolConfig
from mapo.core.run_dir import lock_run_dir, prepare_run_dir
from mapo.train.optim import OptimConfig, build_optimizer, build_scheduler, clip_gradients
from mapo.train.metrics_log import MetricsLogger
from mapo.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, seed_everything
from mapo.train.finetune import FinetuneConfig, prepare_policy
from mapo.train.sft_data import (
    SFTDataConfig,
    Transcript,
    answer_word_mask,
    collate,
    heldout_samples,
    make_transcript,
    synth_config,
    training_transcripts,
)
from mapo.train.sft_metrics import TokenClasses, masked_lm_loss, rollout_eval, teacher_forced_eval

# Keys that may change between a run and its resume (they do not change what is trained).
RESUMABLE_KEYS = ("log_every", "eval_every", "save_every", "keep_last", "tensorboard", "wandb", "threads", "progress")


@dataclass(frozen=True)
class PolicySpec:
    """Which policy to start from."""

    init_from: str | None = knob(None, "local checkpoint directory to fine-tune; null = build a tiny policy")
    preset: str = knob("tiny", "tiny-policy size preset when init_from is null: tiny, small or base")
    arch: str = knob("qwen2_5_vl", "tiny-policy architecture when init_from is null: a model type with a tiny builder (qwen2_5_vl, qwen3_vl; mapo.policy.families)")
    seed: int = knob(0, "weight-initialisation seed of the tiny policy")
    max_number: int | None = knob(1024, "integers 0..max_number are single tokens in the tiny tokenizer (null: digits)")
    dtype: str = knob("float32", "dtype to train in: float32 or bfloat16 (auto: the checkpoint's)")
    overrides: dict = knob(factory=dict, help="TinyPreset field overrides of the tiny policy, e.g. {vision_depth: 4}")


@dataclass(frozen=True)
class SFTEvalConfig:
    """Held-out evaluation (a different seed from training)."""

    seed: int = knob(1_000_003, "seed of the held-out samples (must differ from data.seed)")
    n_teacher_forced: int = knob(32, "held-out transcripts for loss and token accuracy")
    n_rollout: int = knob(32, "held-out samples for greedy multi-turn rollouts (0 = skip)")
    max_turns: int = knob(4, "assistant turns per evaluation rollout")
    max_new_tokens_per_turn: int = knob(96, "generated tokens per turn in evaluation rollouts")


@dataclass(frozen=True)
class SFTConfig:
    """``mapo sft``: supervised warm start on oracle transcripts."""

    steps: int = knob(300, "optimizer steps")
    batch_size: int = knob(8, "transcripts per step")
    seed: int = knob(0, "seed of the torch / numpy / python generators")
    coord_loss_weight: float = knob(1.0, "loss weight of whole-number tokens (box coordinates) relative to other tokens")
    letter_loss_weight: float = knob(
        1.0, "loss weight of single capital-letter tokens but 'I' (the glyph read off a crop, the answer letter)"
    )
    word_loss_weight: float = knob(
        1.0, "loss weight of the tokens spelling the answer word where the transcript writes it (the letter colour "
        "or pattern read off a crop, and its copy)"
    )
    policy: PolicySpec = knob(factory=PolicySpec, help="the policy to train")
    data: SFTDataConfig = knob(factory=SFTDataConfig, help="training transcripts")
    optim: OptimConfig = knob(factory=OptimConfig, help="optimiser and schedule")
    protocol: ProtocolConfig = knob(factory=ProtocolConfig, help="tags and prompts (must match the rollout's)")
    eval: SFTEvalConfig = knob(factory=SFTEvalConfig, help="held-out evaluation")
    finetune: FinetuneConfig = knob(factory=FinetuneConfig, help="full fine-tuning or LoRA (needs policy.init_from); "
                                    "gradient checkpointing")
    log_every: int = knob(5, "log training metrics every this many steps")
    eval_every: int = knob(100, "teacher-forced held-out eval every this many steps (0 = only at the end)")
    save_every: int = knob(100, "checkpoint every this many steps (0 = only at the end)")
    keep_last: int = knob(2, "checkpoints kept on disk")
    tensorboard: bool = knob(True, "also write TensorBoard event files")
    wandb: str | None = knob(None, "also log metrics to this Weights & Biases project (needs the wandb package; "
                             "WANDB_MODE=offline works without a network)")
    threads: int = knob(1, "torch CPU threads (0 = torch's default; on a shared 2-core machine 1 is fastest)")
    progress: bool = knob(True, "report progress: a bar on a terminal, else one plain line every log_every steps")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.coord_loss_weight > 0:
            raise ValueError(f"coord_loss_weight must be > 0, got {self.coord_loss_weight}")
        if not self.letter_loss_weight > 0:
            raise ValueError(f"letter_loss_weight must be > 0, got {self.letter_loss_weight}")
        if not self.word_loss_weight > 0:
            raise ValueError(f"word_loss_weight must be > 0, got {self.word_loss_weight}")
        if self.finetune.method == "lora" and self.policy.init_from is None:
            raise ValueError("finetune.method lora needs policy.init_from (a checkpoint the adapter can name as its "
                             "base); a freshly built tiny policy has none")
        if self.eval.seed == self.data.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}) so evaluation is held out")


# ----------------------------------------------------------------------------- setup


def build_policy(spec: PolicySpec, tool_config=None):
    """The starting policy: ``spec.init_from`` loaded, else a fresh tiny policy whose processor
    passes images within ``tool_config``'s budgets unchanged (the training level's own)."""
    from mapo.policy import build_tiny_policy, load_policy

    if spec.init_from is not None:
        return load_policy(spec.init_from, dtype=spec.dtype)
    policy = build_tiny_policy(
        spec.preset, seed=spec.seed, max_number=spec.max_number, tool_config=tool_config, arch=spec.arch,
        **spec.overrides,
    )
    if spec.dtype == "bfloat16":
        policy.model.to(torch.bfloat16)
    return policy


@dataclass
class _State:
    policy: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int  # optimizer steps done
    cursor: int  # training examples consumed
    token_classes: TokenClasses  # number and capital-letter token ids (loss weights, accuracies)
    own: list | None = None  # data.source's training conversations (mapo.train.sft_own); None = synthetic
    own_heldout: list | None = None  # data.source's held-out conversations


def _setup(cfg: SFTConfig, run_dir: Path, resume: bool) -> _State:
    from mapo.data.task import tool_config_for
    from mapo.policy import load_policy

    prepare_run_dir(run_dir, cfg, kind="sft", resume=resume, ignore=RESUMABLE_KEYS)
    seed_everything(cfg.seed)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        raise ValueError(f"cannot resume {run_dir}: it holds no complete checkpoint")
    if ckpt is not None:
        policy = load_policy(ckpt / "model", dtype=cfg.policy.dtype)
    else:  # a fresh policy whose processor passes the training level's images unchanged
        policy = build_policy(cfg.policy, tool_config_for(synth_config(cfg.data)))
    policy = prepare_policy(policy, cfg.finetune)  # LoRA adapters (a LoRA checkpoint keeps its own), checkpointing
    policy.model.train()
    policy.protocol = cfg.protocol  # recorded with every save (mapo_protocol.json): RL and eval prompt alike
    optimizer = build_optimizer(policy.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    step = cursor = 0
    if ckpt is not None:
        state = load_trainer_state(ckpt, optimizer, scheduler)
        step, cursor = int(state["step"]), int(state["cursor"])
    own = own_heldout = None
    if cfg.data.source is not None:  # read before training starts: a source with no usable row stops here
        from mapo.train import sft_own

        conversations = sft_own.load_conversations(cfg.data.source, cfg.protocol, only_correct=cfg.data.only_correct)
        own, own_heldout = sft_own.split(conversations, cfg.eval.n_teacher_forced)
    return _State(policy, optimizer, scheduler, step, cursor, TokenClasses.of(policy.tokenizer), own, own_heldout)


def _training_batch(st: _State, cfg: SFTConfig) -> list[Transcript]:
    """The next ``batch_size`` transcripts: the synthetic oracle's, or ``data.source``'s conversations."""
    if st.own is None:
        return training_transcripts(st.cursor, cfg.batch_size, st.policy.processor, cfg)
    from mapo.train import sft_own

    picks = [st.own[sft_own.example_index(c, len(st.own), cfg.data.seed)] for c in range(st.cursor, st.cursor + cfg.batch_size)]
    return sft_own.transcripts(picks, st.policy.processor)


# ----------------------------------------------------------------------------- the recipe


def train_step(st: _State, cfg: SFTConfig) -> dict[str, float]:
    """One optimizer step on the next ``batch_size`` transcripts."""
    started = time.perf_counter()
    batch = _training_batch(st, cfg)
    inputs, labels = collate(batch, st.policy, cfg.data.max_length)
    data_s = time.perf_counter() - started
    words = answer_word_mask(batch, labels, st.policy.tokenizer, option_scan=cfg.data.scan_words_weighted,
        search_words=cfg.data.search_words_weighted)
    loss, stats = masked_lm_loss(
        st.policy.model, inputs, labels, coord_weight=cfg.coord_loss_weight, letter_weight=cfg.letter_loss_weight,
        word_mask=words, word_weight=cfg.word_loss_weight, token_classes=st.token_classes,
    )
    loss.backward()
    grad_norm = clip_gradients(st.policy.model, cfg.optim.grad_clip)
    lr = st.optimizer.param_groups[0]["lr"]
    st.optimizer.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.scheduler.step()
    st.step += 1
    st.cursor += cfg.batch_size
    elapsed = time.perf_counter() - started
    return {
        "train/loss": float(loss.detach()), "train/token_acc": stats["token_acc"], "train/grad_norm": grad_norm, "train/lr": lr,
        "train/tokens": stats["tokens"], "train/seq_len": float(inputs["input_ids"].shape[1]),
        "time/step_s": elapsed, "time/data_s": data_s,
        **{f"train/{k}": stats[k] for k in ("coord_token_acc", "letter_token_acc", "word_token_acc") if k in stats},
    }


def run_sft(
    cfg: SFTConfig, run_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
    progress: bool | str | None = None,
) -> dict[str, float]:
    """Train, checkpoint, evaluate; returns the final held-out metrics (also in ``RUN_DIR/eval.json``).

    ``stop_after`` ends this invocation after that many steps *of this invocation*
    with a checkpoint (used to test resume); the run stays resumable. ``progress``
    (:mod:`mapo.core.progress` mode) replaces ``cfg.progress``: ``lines`` prints one plain
    line every ``log_every`` steps.
    """
    progress = cfg.progress if progress is None else progress
    run_dir = Path(run_dir)
    lock = lock_run_dir(run_dir, create=not resume)  # a second process on this directory is refused
    try:
        return _run_sft(cfg, run_dir, resume, stop_after, progress)
    finally:
        if lock is not None:
            lock.release()


def _run_sft(
    cfg: SFTConfig, run_dir: Path, resume: bool, stop_after: int | None, progress: bool | str
) -> dict[str, float]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    st = _setup(cfg, run_dir, resume)
    logger = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb, config=to_dict(cfg))
    logger.truncate_after(st.step)
    eval_transcripts = _heldout_transcripts(st, cfg)
    save = lambda: save_checkpoint(  # noqa: E731 - three call sites below
        run_dir, st.step, save_model=st.policy.save, optimizer=st.optimizer, scheduler=st.scheduler,
        state={"cursor": st.cursor}, keep_last=cfg.keep_last,
    )
    first_step = st.step
    if resume:
        say(f"resuming {run_dir} from step {st.step} of {cfg.steps}", progress)
    with StepProgress("sft", cfg.steps, start=st.step, mode=progress, every=cfg.log_every) as bar:
        while st.step < cfg.steps:
            metrics = train_step(st, cfg)
            bar.update(st.step, {"loss": metrics["train/loss"], "token_acc": metrics["train/token_acc"]})
            if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                logger.log(st.step, metrics)
            if cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < cfg.steps and eval_transcripts:
                held_out = teacher_forced_eval(st.policy, cfg, eval_transcripts, st.token_classes)
                logger.log(st.step, held_out)
                bar.note(f"sft eval step {st.step}: " + "  ".join(f"{k} {v:.3f}" for k, v in held_out.items()))
            if cfg.save_every and st.step % cfg.save_every == 0 and st.step < cfg.steps:
                save()
            if stop_after is not None and st.step - first_step >= stop_after and st.step < cfg.steps:
                save()
                logger.close()
                return {}
    save()
    st.policy.save(run_dir / "final")
    final = teacher_forced_eval(st.policy, cfg, eval_transcripts, st.token_classes) if eval_transcripts else {}
    if cfg.eval.n_rollout and st.own is None:  # own conversations carry no task to replay
        final.update(rollout_eval(st.policy, cfg, heldout_samples(cfg, cfg.eval.n_rollout)))
    logger.log(st.step, final)
    logger.close()
    (run_dir / "eval.json").write_text(json.dumps({"step": st.step, **final}, indent=2) + "\n", encoding="utf-8")
    return final


def _heldout_transcripts(st: _State, cfg: SFTConfig) -> list[Transcript]:
    policy = st.policy
    if st.own is not None:
        from mapo.train import sft_own

        return sft_own.transcripts(st.own_heldout, policy.processor)
    samples = heldout_samples(cfg, cfg.eval.n_teacher_forced)
    return [
        make_transcript(s, policy.processor, seed=cfg.eval.seed * 1_000_003 + i, data=cfg.data, protocol=cfg.protocol)
        for i, s in enumerate(samples)
    ]


def config_from_run_dir(run_dir: str | Path) -> dict:
    """The YAML mapping a run was started with (``RUN_DIR/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not an SFT run directory")
    from mapo.core.config import _read_text, load_yaml

    data = load_yaml(_read_text(path), str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged: it must hold a mapping")
    return data


__all__ = [
    "PolicySpec",
    "SFTConfig",
    "SFTEvalConfig",
    "masked_lm_loss",
    "rollout_eval",
    "run_sft",
    "teacher_forced_eval",
]
