"""SFT warm start: supervised training on oracle transcripts of the synthetic task.

Recipe, top to bottom: ``setup`` (policy, optimiser, run directory, resume) ->
``loop`` (batch of oracle transcripts -> masked next-token loss -> AdamW step ->
metrics / eval / checkpoint) -> ``cleanup`` (final policy in ``RUN_DIR/final/``,
held-out evaluation in ``RUN_DIR/eval.json``).

Data. Training example ``i`` is synthetic sample ``i`` of ``data.seed``
(:func:`mapo.data.synth.generate_one`) turned into an oracle transcript
(:func:`mapo.data.oracle.oracle_trajectory`, seeded by ``(seed, i)``), so the
data stream is a pure function of the cursor: resume needs only the cursor.
``n_train = 0`` draws a fresh sample for every example; ``n_train > 0`` cycles
over that many, reshuffled each epoch. Held-out samples use ``eval.seed``.

Tokens. The whole conversation (system, user + global view, every assistant
turn, every observation + crop) is rendered with the chat template and
tokenised by the processor in one pass. Labels are the assistant turns only:
from after the assistant header (Qwen: ``<|im_start|>assistant\\n``) up to and including
the end-of-turn id (``<|im_end|>``), both read off the chat template
(the model must learn to end its turn); the prompt, observations (including
their image tokens) and padding are ``-100``. The global image is resized to
the view exactly as the rollout does (``tools.view_size``, bicubic).
``data.localize_only`` cuts each transcript after the first assistant turn
(the first zoom), for a localisation-only stage (docs/warmstart.md, "Probe").

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

import numpy as np
import torch
from PIL import Image

from mapo import tools
from mapo.config import knob, to_dict
from mapo.data.synth import SynthOverrides
from mapo.progress import StepProgress, say
from mapo.protocol import ProtocolConfig
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

IGNORE = -100
# Keys that may change between a run and its resume (they do not change what is trained).
RESUMABLE_KEYS = ("log_every", "eval_every", "save_every", "keep_last", "tensorboard", "wandb", "threads", "progress")


@dataclass(frozen=True)
class PolicySpec:
    """Which policy to start from."""

    init_from: str | None = knob(None, "local checkpoint directory to fine-tune; null = build a tiny policy")
    preset: str = knob("tiny", "tiny-policy size preset when init_from is null: tiny, small or base")
    arch: str = knob("qwen2_5_vl", "tiny-policy architecture when init_from is null: qwen2_5_vl or qwen3_vl")
    seed: int = knob(0, "weight-initialisation seed of the tiny policy")
    max_number: int | None = knob(1024, "integers 0..max_number are single tokens in the tiny tokenizer (null: digits)")
    dtype: str = knob("float32", "dtype to train in: float32 or bfloat16 (auto: the checkpoint's)")
    overrides: dict = knob(factory=dict, help="TinyPreset field overrides of the tiny policy, e.g. {vision_depth: 4}")


@dataclass(frozen=True)
class SFTDataConfig:
    """Where the oracle transcripts come from."""

    level: str = knob("easy", "synthetic task level (mapo.data.synth.LEVELS)")
    synth: SynthOverrides = knob(factory=SynthOverrides, help="SynthConfig knobs on top of the level, e.g. {tint_strength: 0.5}")
    seed: int = knob(0, "seed of the training samples")
    n_train: int = knob(0, "distinct training samples (0 = a fresh sample for every example)")
    jitter: float = knob(0.1, "oracle box-corner jitter (fraction of the box side); misses teach re-zooming")
    wrong_first_zoom: float = knob(0.1, "probability the oracle's first zoom lands elsewhere, then recovers")
    max_length: int = knob(2048, "examples longer than this many tokens are refused (error, not truncation)")
    localize_only: bool = knob(False, "end each transcript after its first tool call (a localisation-only stage)")
    glyph_hint: float = knob(
        0.0, "fraction of glyph questions whose prompt also states the glyph (a copying stage: docs/warmstart.md)"
    )
    option_scan: bool = knob(
        False, "the final thought goes through the options up to the correct one ('(A) bands: no. (B) checks: yes.')"
    )
    scan_words_weighted: bool = knob(
        False, "with option_scan, every scanned option's text and its yes/no verdict weigh word_loss_weight too"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.glyph_hint <= 1:
            raise ValueError(f"glyph_hint must be in [0, 1], got {self.glyph_hint}")
        if self.n_train < 0:
            raise ValueError(f"n_train must be >= 0 (0 = unlimited fresh samples), got {self.n_train}")
        if not (0 <= self.jitter <= 1 and 0 <= self.wrong_first_zoom <= 1):
            raise ValueError("jitter and wrong_first_zoom must be in [0, 1]")
        if self.scan_words_weighted and not self.option_scan:
            raise ValueError("scan_words_weighted needs option_scan: true (there is no scan to weigh otherwise)")


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
        if self.eval.seed == self.data.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}) so evaluation is held out")


# ----------------------------------------------------------------------------- data


def synth_config(cfg: SFTDataConfig):
    from mapo.data import synth

    return synth.level_config(cfg.level, **cfg.synth.set_keys())


@dataclass
class Transcript:
    """One oracle conversation ready for the processor: chat text and images in sequence order."""

    text: str
    images: list[Image.Image]  # global view (resized to the view), then each crop
    sample: Any  # mapo.data.Sample


def make_transcript(sample, processor, *, seed: int, data: SFTDataConfig, protocol: ProtocolConfig) -> Transcript:
    """The oracle transcript of ``sample`` as chat text plus the images the model sees."""
    from mapo.data.oracle import oracle_trajectory
    from mapo.data.task import tool_config_for

    from mapo.policy.processor import processor_factor

    # The oracle writes boxes in the view the policy will see: smart-resized with its own factor.
    tool_config = tools.with_factor(tool_config_for(sample), processor_factor(processor))
    demo = oracle_trajectory(
        sample, rng_or_seed=seed, jitter=data.jitter, wrong_first_zoom=data.wrong_first_zoom,
        tool_config=tool_config, protocol_config=protocol, option_scan=data.option_scan,
    )
    messages, crops = demo.messages, demo.images[1:]
    if data.glyph_hint and np.random.default_rng([seed, 7]).random() < data.glyph_hint:
        messages = with_glyph_hint(messages, sample)
    if data.localize_only:
        # Keep system, user and the first assistant turn (think + box + label), so steps are
        # short and the loss is the first zoom alone; the crop it would return is never shown.
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages, crops = messages[: first + 1], []
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return Transcript(text, [global_view(demo.images[0], tool_config), *crops], sample)


def with_glyph_hint(messages: list[dict], sample) -> list[dict]:
    """``messages`` whose first user turn ends with "Hint: the letter is K." (glyph questions only).

    The oracle's answer then only needs copying from the prompt (description, thought) and a
    lookup among the options (answer letter): a stage that teaches those two operations
    without reading the crop.
    """
    if sample.task is None or sample.task.family != "glyph" or not sample.answer:
        return messages
    glyph = sample.options[ord(sample.answer) - ord("A")]
    out = [dict(m) for m in messages]
    user = next(m for m in out if m["role"] == "user")
    user["content"] = [
        {**part, "text": f"{part['text']}\nHint: the letter is {glyph}."} if part.get("type") == "text" else part
        for part in user["content"]
    ]
    return out


def global_view(image: Image.Image, tool_config: tools.ToolConfig) -> Image.Image:
    """The global image as the model sees it (same resize as ``mapo.rollout``)."""
    view_wh = tools.view_size(image.size, tool_config)
    return image if image.size == view_wh else image.resize(view_wh, Image.Resampling.BICUBIC)


def sample_index(cursor: int, data: SFTDataConfig) -> int:
    """Synthetic sample index of training example ``cursor`` (a pure function: resume needs only the cursor)."""
    if data.n_train == 0:
        return cursor
    epoch, pos = divmod(cursor, data.n_train)
    return int(np.random.default_rng([data.seed, epoch]).permutation(data.n_train)[pos])


def training_transcripts(start: int, count: int, processor, cfg: SFTConfig) -> list[Transcript]:
    from mapo.data import synth

    sc = synth_config(cfg.data)
    out = []
    for cursor in range(start, start + count):
        index = sample_index(cursor, cfg.data)
        sample = synth.generate_one(sc, cfg.data.seed, index)
        out.append(make_transcript(sample, processor, seed=cfg.data.seed * 1_000_003 + index, data=cfg.data, protocol=cfg.protocol))
    return out


def assistant_mask(input_ids: torch.Tensor, header: list[int], end_id: int) -> torch.Tensor:
    """True on the tokens of assistant turns: after each ``header`` run up to and including ``end_id``.

    Args:
        input_ids: (B, T) token ids.
        header: ids of ``<|im_start|>assistant\\n``.
        end_id: id of ``<|im_end|>``.

    Returns:
        (B, T) bool.
    """
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    n = len(header)
    for b, row in enumerate(input_ids.tolist()):
        t = 0
        while t <= len(row) - n:
            if row[t : t + n] != header:
                t += 1
                continue
            t += n
            while t < len(row):
                mask[b, t] = True
                if row[t] == end_id:
                    break
                t += 1
    return mask


def assistant_markers(tokenizer) -> tuple[list[int], int]:
    """(ids that open an assistant turn, id that closes it), read off the chat template.

    The header is what ``add_generation_prompt`` appends (Qwen: ``<|im_start|>assistant\\n``);
    the closing id is the first id the template puts after an assistant message's content
    (Qwen: ``<|im_end|>``). Reading them from the template rather than spelling them keeps
    the labels right for any Qwen-VL generation's template.
    """
    system = [{"role": "system", "content": "s"}]
    before = tokenizer.apply_chat_template(system, tokenize=False, add_generation_prompt=False)
    after = tokenizer.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    if not after.startswith(before) or after == before:
        raise ValueError("the chat template does not render an assistant header with add_generation_prompt")
    header = tokenizer(after[len(before):], add_special_tokens=False)["input_ids"]
    sentinel = "\u2063MAPO\u2063"
    text = tokenizer.apply_chat_template(system + [{"role": "assistant", "content": sentinel}], tokenize=False)
    close = tokenizer(text[text.index(sentinel) + len(sentinel):], add_special_tokens=False)["input_ids"]
    if not close:
        raise ValueError("the chat template puts nothing after an assistant message; cannot find the end of a turn")
    return list(header), int(close[0])


def collate(transcripts: list[Transcript], policy, max_length: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Processor inputs for a batch and its labels.

    Returns:
        inputs: ``input_ids``/``attention_mask``/``mm_token_type_ids`` (B, T), ``pixel_values``
            (patches, D) and ``image_grid_thw`` (images, 3), images in sequence order across the batch.
        labels: (B, T) long, the token id on assistant tokens, -100 elsewhere.
    """
    inputs = policy.processor(
        text=[t.text for t in transcripts],
        images=[im for t in transcripts for im in t.images],
        return_tensors="pt",
        padding=True,
        padding_side="right",
    )
    lengths = inputs["attention_mask"].sum(-1)
    if int(lengths.max()) > max_length:
        raise ValueError(f"a transcript has {int(lengths.max())} tokens > data.max_length={max_length}; raise it")
    header, end_id = assistant_markers(policy.tokenizer)
    mask = assistant_mask(inputs["input_ids"], header, end_id)
    mask &= inputs["attention_mask"].bool()
    labels = torch.where(mask, inputs["input_ids"], torch.full_like(inputs["input_ids"], IGNORE))  # (B, T)
    return dict(inputs), labels


# ----------------------------------------------------------------------------- loss


def answer_word_mask(
    transcripts: list[Transcript], labels: torch.Tensor, tokenizer, *, option_scan: bool = False
) -> torch.Tensor:
    """(B, T) bool: the labelled tokens that spell each transcript's answer word (" cyan", " checks").

    Every labelled occurrence counts: on ink and pattern levels that is the description (read off
    the crop) and the final thought (its copy). Matched as whole token runs, so a word's tokens
    elsewhere ("a" in "a red square") are not marked. With ``option_scan`` (transcripts whose
    final thought goes through the options, ``(A) bands: no. (B) checks: yes.``) every option's
    text and the " yes" / " no" verdicts are marked too: copying each option and deciding whether
    it is the answer are the steps that find the letter.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for b, transcript in enumerate(transcripts):
        answer = getattr(transcript.sample, "answer_text", None)
        if not answer:
            continue
        words = [answer]
        if option_scan:
            words += [o for o in transcript.sample.options if o != answer] + ["yes", "no"]
        for text in words:
            word = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            for k in token_runs(labels[b].tolist(), word):
                mask[b, k : k + len(word)] = True
    return mask


def token_runs(row: list[int], word: list[int]) -> list[int]:
    """Start indices of every occurrence of the token run ``word`` in ``row``."""
    n = len(word)
    return [k for k in range(len(row) - n + 1) if row[k : k + n] == word]


def masked_lm_loss(
    model,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    coord_weight: float = 1.0,
    letter_weight: float = 1.0,
    word_mask: torch.Tensor | None = None,
    word_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean cross-entropy over labelled tokens; logits only where a label follows.

    With ``coord_weight`` / ``letter_weight`` != 1, whole-number tokens (the box coordinates)
    and single capital-letter tokens (glyphs and answer letters) weigh that much and the mean
    is weighted: ``sum_t w_t CE_t / sum_t w_t``. Both token classes come from
    :func:`mark_number_tokens`. ``word_mask`` (B, T), from :func:`answer_word_mask`, marks the
    answer word's tokens: they weigh ``word_weight`` and get their own accuracy.

    Computing the LM head only at positions ``t`` with a label at ``t + 1`` (the
    union over the batch) skips the prompt and observations, a large part of
    each sequence.

    Args:
        inputs: processor output for (B, T) tokens.
        labels: (B, T) long, -100 where not trained.

    Returns:
        (loss, stats) with ``tokens`` (labelled tokens), ``token_acc`` (greedy match rate) and,
        when the batch has such tokens, ``coord_token_acc`` / ``letter_token_acc`` / ``word_token_acc``.
    """
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    keep = (targets != IGNORE).any(0).nonzero().squeeze(-1)  # (K,) positions needing logits
    if keep.numel() == 0:
        raise ValueError("the batch has no assistant tokens to train on")
    logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
    picked = targets[:, keep]  # (B, K)
    valid = picked != IGNORE
    numbers = _token_class_mask(picked, model, "_mapo_number_ids") & valid  # (B, K)
    letters = _token_class_mask(picked, model, "_mapo_letter_ids") & valid  # (B, K)
    words = (word_mask[:, 1:][:, keep] if word_mask is not None else torch.zeros_like(valid)) & valid  # (B, K)
    if coord_weight == 1.0 and letter_weight == 1.0 and word_weight == 1.0:
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), picked, ignore_index=IGNORE)
    else:
        per_token = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), picked, ignore_index=IGNORE, reduction="none"
        )  # (B, K), 0 where ignored
        weight = torch.where(numbers, coord_weight, torch.where(letters, letter_weight, 1.0))  # (B, K)
        weight = torch.where(words, word_weight, weight) * valid
        loss = (per_token * weight).sum() / weight.sum()
    with torch.no_grad():
        correct = (logits.argmax(-1) == picked) & valid
        stats = {"tokens": float(valid.sum()), "token_acc": float(correct.sum() / valid.sum().clamp(min=1))}
        for name, mask in (("coord_token_acc", numbers), ("letter_token_acc", letters), ("word_token_acc", words)):
            if mask.any():
                stats[name] = float((correct & mask).sum() / mask.sum())
                stats[name.replace("_acc", "_count")] = float(mask.sum())
    return loss, stats


def _token_class_mask(ids: torch.Tensor, model, attribute: str) -> torch.Tensor:
    table = getattr(model, attribute, None)
    return table[ids.clamp(min=0)] if table is not None else torch.zeros_like(ids, dtype=torch.bool)


def mark_number_tokens(model, tokenizer) -> None:
    """Remember which ids are whole numbers and which single capital letters (loss weights, accuracies)."""
    vocab = tokenizer.get_vocab()
    numbers = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    letters = torch.zeros_like(numbers)
    for token, i in vocab.items():
        bare = token.lstrip("Ġ")
        numbers[i] = bare.isdigit()
        # The pronoun "I" is no glyph (mapo.data.synth.GLYPHS leaves it out) and would only pad the metric.
        letters[i] = len(bare) == 1 and "A" <= bare <= "Z" and bare != "I"
    model._mapo_number_ids = numbers
    model._mapo_letter_ids = letters


# ----------------------------------------------------------------------------- evaluation


def heldout_samples(cfg: SFTConfig, n: int) -> list:
    from mapo.data import synth

    return synth.generate(n, seed=cfg.eval.seed, config=synth_config(cfg.data))


@torch.no_grad()
def teacher_forced_eval(policy, cfg: SFTConfig, transcripts: list[Transcript]) -> dict[str, float]:
    """Loss and token accuracies on held-out oracle transcripts (batches of ``batch_size``)."""
    was_training = policy.model.training
    policy.model.eval()
    totals: dict[str, float] = {"loss": 0.0, "token_acc": 0.0, "tokens": 0.0}
    for i in range(0, len(transcripts), cfg.batch_size):
        chunk = transcripts[i : i + cfg.batch_size]
        inputs, labels = collate(chunk, policy, cfg.data.max_length)
        words = answer_word_mask(chunk, labels, policy.tokenizer, option_scan=cfg.data.scan_words_weighted)
        loss, stats = masked_lm_loss(policy.model, inputs, labels, word_mask=words)
        n = stats["tokens"]
        totals["loss"] += float(loss) * n
        totals["token_acc"] += stats["token_acc"] * n
        totals["tokens"] += n
        for name in ("coord", "letter", "word"):  # accuracies weighted by their own token counts
            count = stats.get(f"{name}_token_count", 0.0)
            totals[f"{name}_correct"] = totals.get(f"{name}_correct", 0.0) + stats.get(f"{name}_token_acc", 0.0) * count
            totals[f"{name}_count"] = totals.get(f"{name}_count", 0.0) + count
    policy.model.train(was_training)
    n = max(totals["tokens"], 1.0)
    out = {"eval/loss": totals["loss"] / n, "eval/token_acc": totals["token_acc"] / n}
    for name in ("coord", "letter", "word"):
        if totals[f"{name}_count"]:
            out[f"eval/{name}_token_acc"] = totals[f"{name}_correct"] / totals[f"{name}_count"]
    return out


def rollout_eval(policy, cfg: SFTConfig, samples: list) -> dict[str, float]:
    """Greedy multi-turn rollouts on held-out samples: accuracy, valid-call rate, crop IoU.

    Formulas (per held-out set):
        accuracy = mean_i [extracted letter of answer_i == sample_i.answer]
        valid_call_rate = valid tool calls / tool calls
        mean_iou = mean over valid calls of max_target IoU(crop box, target box), original pixels
        first_zoom_hit = mean_i [IoU(first valid crop_i, target) >= 0.5] (0 without a valid call)
    """
    from mapo.data.scoring import extract_choice
    from mapo.data.task import tool_config_for
    from mapo.rollout import RolloutConfig, rollout, rollout_stats

    if not samples:
        return {}
    rc = RolloutConfig(
        group_size=1, greedy=True, max_turns=cfg.eval.max_turns, max_new_tokens_per_turn=cfg.eval.max_new_tokens_per_turn,
        batch_size=max(1, min(32, len(samples))), tool=tool_config_for(samples[0]), protocol=cfg.protocol,
    )
    trajectories = rollout(samples, policy, rc)
    correct, ious, hits, calls, valid = [], [], [], 0, 0
    for t in trajectories:
        s = t.sample
        letter = extract_choice(t.answer_text, s.options) if t.answer_text is not None else None
        correct.append(letter == s.answer)
        first = None
        for c in t.tool_calls:
            calls += 1
            if c.valid:
                valid += 1
                iou = max((tools.box_iou(c.box_original, b.xyxy) for b in s.target_boxes), default=0.0)
                ious.append(iou)
                first = iou if first is None else first
        hits.append(first is not None and first >= 0.5)
    stats = rollout_stats(trajectories)
    return {
        "heldout/accuracy": float(np.mean(correct)),
        "heldout/valid_call_rate": valid / calls if calls else 0.0,
        "heldout/mean_iou": float(np.mean(ious)) if ious else 0.0,
        "heldout/first_zoom_hit@0.5": float(np.mean(hits)),
        "heldout/tool_use_rate": stats["tool_use_rate"],
        "heldout/turns_per_trajectory": stats["turns_per_trajectory"],
        "heldout/format_error_turns": stats["turns_with_format_errors"],
        "heldout/n": float(len(trajectories)),
    }


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


def _setup(cfg: SFTConfig, run_dir: Path, resume: bool) -> _State:
    from mapo.data import synth
    from mapo.policy import load_policy

    prepare_run_dir(run_dir, cfg, kind="sft", resume=resume, ignore=RESUMABLE_KEYS)
    seed_everything(cfg.seed)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        raise ValueError(f"cannot resume {run_dir}: it holds no complete checkpoint")
    policy = load_policy(ckpt / "model", dtype=cfg.policy.dtype) if ckpt else build_policy(cfg.policy, synth.tool_config_for(synth_config(cfg.data)))
    policy.model.train()
    policy.protocol = cfg.protocol  # recorded with every save (mapo_protocol.json): RL and eval prompt alike
    optimizer = build_optimizer(policy.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    step = cursor = 0
    if ckpt is not None:
        state = load_trainer_state(ckpt, optimizer, scheduler)
        step, cursor = int(state["step"]), int(state["cursor"])
    mark_number_tokens(policy.model, policy.tokenizer)
    return _State(policy, optimizer, scheduler, step, cursor)


# ----------------------------------------------------------------------------- the recipe


def train_step(st: _State, cfg: SFTConfig) -> dict[str, float]:
    """One optimizer step on the next ``batch_size`` transcripts."""
    started = time.perf_counter()
    batch = training_transcripts(st.cursor, cfg.batch_size, st.policy.processor, cfg)
    inputs, labels = collate(batch, st.policy, cfg.data.max_length)
    data_s = time.perf_counter() - started
    words = answer_word_mask(batch, labels, st.policy.tokenizer, option_scan=cfg.data.scan_words_weighted)
    loss, stats = masked_lm_loss(
        st.policy.model, inputs, labels, coord_weight=cfg.coord_loss_weight, letter_weight=cfg.letter_loss_weight,
        word_mask=words, word_weight=cfg.word_loss_weight,
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
    (:mod:`mapo.progress` mode) replaces ``cfg.progress``: ``lines`` prints one plain
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
    eval_transcripts = _heldout_transcripts(st.policy, cfg)
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
            if cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < cfg.steps:
                held_out = teacher_forced_eval(st.policy, cfg, eval_transcripts)
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
    final = teacher_forced_eval(st.policy, cfg, eval_transcripts)
    if cfg.eval.n_rollout:
        final.update(rollout_eval(st.policy, cfg, heldout_samples(cfg, cfg.eval.n_rollout)))
    logger.log(st.step, final)
    logger.close()
    (run_dir / "eval.json").write_text(json.dumps({"step": st.step, **final}, indent=2) + "\n", encoding="utf-8")
    return final


def _heldout_transcripts(policy, cfg: SFTConfig) -> list[Transcript]:
    samples = heldout_samples(cfg, cfg.eval.n_teacher_forced)
    return [
        make_transcript(s, policy.processor, seed=cfg.eval.seed * 1_000_003 + i, data=cfg.data, protocol=cfg.protocol)
        for i, s in enumerate(samples)
    ]


def config_from_run_dir(run_dir: str | Path) -> dict:
    """The YAML mapping a run was started with (``RUN_DIR/config.yaml``)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not an SFT run directory")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


__all__ = [
    "PolicySpec",
    "SFTConfig",
    "SFTDataConfig",
    "SFTEvalConfig",
    "assistant_mask",
    "collate",
    "masked_lm_loss",
    "rollout_eval",
    "run_sft",
    "teacher_forced_eval",
]
