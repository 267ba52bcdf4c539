"""Train a tiny CLIP from scratch on (crop, caption) pairs, with hard negatives.

The embedded default has no pretrained CLIP, so ``mapo verifier train`` builds a
small transformers ``CLIPModel`` and trains it contrastively on crops of the
synthetic task (made by the real zoom-in tool at the task's observation budget,
see :func:`mapo.verifier.pairs.synth_pairs`)
paired with their ground-truth captions. It saves a standard HF CLIP directory
(config, safetensors weights, ``preprocessor_config.json``, ``tokenizer.json``)
that :func:`mapo.verifier.load_verifier` loads through the same code path as a
real CLIP.

Loss (per batch of B crops, each with H hard-negative captions):

- image→text: softmax cross-entropy of each crop against the *unique* texts of the
  batch (all positives and all hard negatives). Identical strings are merged, so
  two crops with the same caption (e.g. two empty-background crops) are never
  each other's negatives;
- text→image: each unique positive caption against the B crops, with the target
  spread uniformly over every crop that carries that caption;
- loss = mean of the two; the logit scale is learned (CLIP init 1/0.07, capped at 100).

Departures and guesses: the paper uses a pretrained CLIP; this tiny model only
knows the synthetic task's vocabulary (unknown words map to ``<unk>``). Its
tokenizer is a word-level vocabulary of the training captions plus single
letters and digits, lower-cased; a real CLIP's BPE tokenizer is loaded unchanged.
Images are squashed to a square (no centre crop) so that objects at a crop's
edge are not cut away; a real CLIP keeps its own processor settings.

Known limit: at the default budget (about 5 CPU-minutes) the model tells colour,
shape and emptiness apart but does not read the letter (``hard_win["glyph"]`` about
0.5, chance); the figures and what was tried are in ``docs/verifier.md``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mapo.core.config import knob, save_config
from mapo.core.progress import StepProgress, say

# The pairs and the model live in their own modules; their names stay importable from here.
from mapo.verifier.pairs import ATTRIBUTES, CropPair, is_label_pair, negative_kind, synth_pairs
from mapo.verifier.tiny_clip import build_image_processor, build_tiny_clip, build_tokenizer
from mapo.data.task import tool_config_for


@dataclass(frozen=True)
class VerifierTrainConfig:
    """How ``mapo verifier train`` builds its data and its tiny CLIP."""

    # data
    data: str | None = knob(None, "directory of samples (`mapo data synth` output); None: generate synthetic samples")
    synth_level: str = knob("medium", "synthetic task level used when `data` is None")
    n_samples: int = knob(400, "synthetic samples generated when `data` is None (or the first n of `data`)")
    crops_per_sample: int = knob(8, "crops cut from each sample (targets, distractors, partial views, background)")
    hard_negatives: int = knob(4, "captions with one attribute changed, per crop, put in its batch as extra negatives (4: all on letter levels; ink levels have 5)")
    focus_attribute: str | None = knob(
        None, "an attribute (colour, shape, glyph, ink, pattern) whose hard negatives count focus_weight times "
        "in their crop's image-to-text softmax; None: all count once"
    )
    focus_weight: float = knob(1.0, "how many times a focus_attribute hard negative counts (its logit + log weight)")
    label_texts: bool = knob(
        False, "also train on the short labels a tool call writes (\"red square\"): a label matches a crop of its "
        "object, not a crop of another object of the same image nor an empty one (mapo.verifier.pairs.label_pair)"
    )
    label_frac: float = knob(0.5, "with label_texts: the probability that a crop also gets a label pair")
    label_negatives: int = knob(8, "with label_texts: hard negatives per label pair (other objects' labels, "
                                   "one-word-changed labels, \"empty background\")")
    same_image_batches: bool = knob(
        False, "build each batch from whole samples, so a text's batch holds the other crops of its image "
        "(same-image hard negatives for text-to-image); false: crops are shuffled freely"
    )
    val_fraction: float = knob(0.15, "fraction of samples held out for the quality report (split by sample)")
    seed: int = knob(0, "seed for data, initialisation and batching")
    # model
    image_size: int = knob(112, "side of the square the crops are resized to")
    patch_size: int = knob(14, "vision patch size; image_size must be a multiple of it")
    vision_width: int = knob(96, "vision transformer hidden size")
    vision_layers: int = knob(3, "vision transformer layers")
    text_width: int = knob(96, "text transformer hidden size")
    text_layers: int = knob(2, "text transformer layers")
    heads: int = knob(4, "attention heads (vision and text)")
    projection_dim: int = knob(96, "shared embedding size D")
    max_text_tokens: int = knob(32, "text context, special tokens included; longer descriptions are truncated")
    # optimisation
    steps: int = knob(800, "optimizer steps")
    batch_size: int = knob(64, "crops per step")
    lr: float = knob(2e-3, "peak AdamW learning rate (linear warmup, cosine decay)")
    warmup_steps: int = knob(100, "learning-rate warmup steps")
    weight_decay: float = knob(0.05, "AdamW weight decay")
    logit_scale_init: float = knob(1 / 0.07, "initial inverse temperature (learned, capped at 100); CLIP's 1/0.07 by default")
    num_threads: int = knob(2, "torch CPU threads")
    # report
    eval_candidates: int = knob(16, "images per text→image retrieval query (1 correct + distractors)")

    def __post_init__(self) -> None:
        for name in ("n_samples", "crops_per_sample", "image_size", "patch_size", "vision_width", "vision_layers",
                     "text_width", "text_layers", "heads", "projection_dim", "steps", "batch_size", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hard_negatives < 0 or self.warmup_steps < 0 or self.label_negatives < 0:
            raise ValueError("hard_negatives, label_negatives and warmup_steps must be >= 0")
        if not 0.0 < self.label_frac <= 1.0:
            raise ValueError(f"label_frac must be in (0, 1], got {self.label_frac}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        for name in ("vision_width", "text_width"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"{name} ({getattr(self, name)}) must be divisible by heads ({self.heads})")
        if self.max_text_tokens < 4:
            raise ValueError(f"max_text_tokens must be >= 4 (two special tokens plus text), got {self.max_text_tokens}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.eval_candidates < 2:
            raise ValueError(f"eval_candidates must be >= 2, got {self.eval_candidates}")
        if not 1.0 <= self.logit_scale_init <= 100.0:
            raise ValueError(f"logit_scale_init must be in [1, 100] (the learned scale is capped at 100), got {self.logit_scale_init}")
        if self.focus_attribute is not None and self.focus_attribute not in ATTRIBUTES:
            raise ValueError(f"focus_attribute must be one of {', '.join(ATTRIBUTES)} or null, got {self.focus_attribute!r}")
        if not self.focus_weight >= 1.0:
            raise ValueError(f"focus_weight must be >= 1 (1: no focus), got {self.focus_weight}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError("lr must be > 0 and weight_decay >= 0")



# --------------------------------------------------------------------------- loss


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, positive: torch.Tensor, caption_ids: torch.Tensor,
    logit_scale: torch.Tensor, negative_log_weight: torch.Tensor | None = None, true: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over B images and U unique texts (positives and hard negatives).

    Args:
        image_emb: (B, D) unit-norm image embeddings.
        text_emb: (U, D) unit-norm embeddings of the batch's unique texts.
        positive: (B,) long, index in ``text_emb`` of each image's caption.
        caption_ids: (P,) long, the unique indices that are some image's caption
            (text→image queries; hard-negative-only texts are not queries).
        logit_scale: scalar, log of the inverse temperature.
        negative_log_weight: optional (B, U), added to the image→text logits: ``log w`` makes
            text ``u`` count ``w`` times as a negative of image ``b`` (0 elsewhere, and on positives).
        true: optional (B, U) bool, text ``u`` is also true of image ``b`` (``CropPair.matches``): it is left
            out of image ``b``'s image→text softmax, and image ``b`` is a positive of text ``u``'s
            text→image query. None: only ``positive`` is true.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, U)
    i2t = logits if negative_log_weight is None else logits + negative_log_weight
    rows = torch.arange(len(positive))
    if true is not None:
        others = true.clone()
        others[rows, positive] = False
        i2t = i2t.masked_fill(others, float("-inf"))
    loss_i2t = F.cross_entropy(i2t, positive)
    if true is None:
        match = (positive[None, :] == caption_ids[:, None]).float()  # (P, B): text p describes image b
    else:
        true = true.clone()
        true[rows, positive] = True
        match = true[:, caption_ids].T.float()
    target = match / match.sum(1, keepdim=True)
    loss_t2i = -(target * logits[:, caption_ids].T.log_softmax(1)).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


# --------------------------------------------------------------------------- training


def _lr_at(step: int, config: VerifierTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _encode_texts(tokenizer, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")


def train_on_pairs(
    pairs: Sequence[CropPair], config: VerifierTrainConfig, out_dir: str | Path, *, progress: bool | str = True
) -> dict:
    """Train a tiny CLIP on ``pairs`` and save it to ``out_dir``; return training facts.

    ``progress``: a :mod:`mapo.core.progress` mode (plain lines: ten over the run).

    Returns a dict with ``train_seconds``, ``steps``, ``final_loss``, ``n_pairs`` and
    ``vocab_size``. The quality report is :func:`evaluate` on held-out pairs.
    """
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 training pairs, got {len(pairs)}")
    torch.set_num_threads(config.num_threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)

    all_texts = [p.caption for p in pairs] + [n for p in pairs for n in p.negatives]
    tokenizer = build_tokenizer(all_texts, config.max_text_tokens)
    processor = build_image_processor(config.image_size)
    model = build_tiny_clip(config, vocab_size=len(tokenizer))
    model.train()

    started = time.perf_counter()
    pixels = CropTensor(pairs, processor)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )
    order: list[int] = []
    losses: list[float] = []
    with StepProgress("verifier", config.steps, mode=progress, every=max(1, config.steps // 10)) as bar:
        for step in range(config.steps):
            if len(order) < config.batch_size:
                order.extend(_epoch_order(pairs, config.same_image_batches, rng))
            batch, order = order[: config.batch_size], order[config.batch_size :]
            loss = _train_step(model, tokenizer, pixels, pairs, batch, config, rng)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.update(step + 1, {"loss": sum(losses[-50:]) / len(losses[-50:]), "scale": model.logit_scale.exp().item()})
    train_seconds = time.perf_counter() - started

    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    save_config(config, out_dir / "verifier_train.yaml")
    return {
        "train_seconds": round(train_seconds, 1),
        "steps": config.steps,
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "n_pairs": len(pairs),
        "vocab_size": len(tokenizer),
        "num_threads": config.num_threads,
    }


def _epoch_order(pairs: Sequence[CropPair], same_image: bool, rng: random.Random) -> list[int]:
    """One pass over ``pairs`` in random order; with ``same_image``, the crops of a sample stay together."""
    if not same_image:
        fresh = list(range(len(pairs)))
        rng.shuffle(fresh)
        return fresh
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.group, []).append(i)
    blocks = list(groups.values())
    rng.shuffle(blocks)
    return [i for block in blocks for i in block]


class CropTensor:
    """All training crops resized once to the model's square and kept as uint8 (M, 3, S, S).

    Float32 pixels of 4,000 crops at 112 px would take 600 MB; uint8 takes a quarter.
    :meth:`batch` applies the processor's rescale and normalisation, so a batch equals
    ``processor(images)["pixel_values"]`` (a test checks this).
    """

    def __init__(self, pairs: Sequence[CropPair], processor):
        side = (processor.size["width"], processor.size["height"])
        resample = Image.Resampling(int(processor.resample))
        rows: dict[int, int] = {}  # id(image) -> row: a crop with a caption pair and a label pair is stored once
        arrays = []
        for p in pairs:
            if id(p.image) not in rows:
                rows[id(p.image)] = len(arrays)
                arrays.append(np.asarray(p.image.convert("RGB").resize(side, resample)))
        self.row = [rows[id(p.image)] for p in pairs]
        self.data = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (M', 3, S, S) uint8
        self.mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        self.scale = float(processor.rescale_factor)

    def batch(self, index: Sequence[int]) -> torch.Tensor:
        """(B, 3, S, S) float32 normalised pixels of crops ``index``."""
        return (self.data[[self.row[i] for i in index]].float() * self.scale - self.mean) / self.std


def _train_step(model, tokenizer, pixels, pairs, batch, config, rng) -> torch.Tensor:
    """Loss of one batch: B crops, their captions and up to H hard negatives each."""
    texts: dict[str, int] = {}
    positive = []
    for i in batch:
        positive.append(texts.setdefault(pairs[i].caption, len(texts)))
    caption_ids = sorted(set(positive))
    focused: list[tuple[int, int]] = []  # (row, text index) of focus_attribute hard negatives
    for row, i in enumerate(batch):
        negatives = pairs[i].negatives
        n = config.label_negatives if is_label_pair(pairs[i]) else config.hard_negatives
        for neg in rng.sample(negatives, min(n, len(negatives))):
            index = texts.setdefault(neg, len(texts))
            if config.focus_attribute and negative_kind(pairs[i].caption, neg) == config.focus_attribute:
                focused.append((row, index))
    enc = _encode_texts(tokenizer, list(texts), config.max_text_tokens)
    text_emb = F.normalize(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output, dim=-1)
    image_emb = F.normalize(model.get_image_features(pixel_values=pixels.batch(batch)).pooler_output, dim=-1)
    log_weight = None
    if focused and config.focus_weight > 1.0:
        log_weight = torch.zeros((len(batch), len(texts)))
        rows, cols = zip(*focused)
        log_weight[list(rows), list(cols)] = math.log(config.focus_weight)
    true = None
    if any(pairs[i].matches for i in batch):
        true = torch.zeros((len(batch), len(texts)), dtype=torch.bool)
        for row, i in enumerate(batch):
            for text in pairs[i].matches:
                if text in texts:
                    true[row, texts[text]] = True
    return contrastive_loss(
        image_emb, text_emb, torch.tensor(positive), torch.tensor(caption_ids), model.logit_scale, log_weight, true
    )


def save_metrics(metrics: dict, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return path


def split_by_group(pairs: Sequence[CropPair], val_fraction: float, seed: int) -> tuple[list[CropPair], list[CropPair]]:
    """(train, val) with every crop of one sample on the same side."""
    groups = sorted({p.group for p in pairs})
    random.Random(seed).shuffle(groups)
    n_val = max(1, round(len(groups) * val_fraction))
    val_groups = set(groups[:n_val])
    return [p for p in pairs if p.group not in val_groups], [p for p in pairs if p.group in val_groups]


def load_training_samples(config: VerifierTrainConfig) -> tuple[list, object]:
    """(samples, tool_config): from ``config.data`` (any format ``load_samples`` reads) or generated."""
    from mapo.data import synth

    if config.data is None:
        level = synth.level_config(config.synth_level)
        return synth.generate(config.n_samples, config.seed, level), tool_config_for(level)
    from mapo.data import load_samples

    samples = list(load_samples(config.data))[: config.n_samples]
    samples = [s for s in samples if s.boxes]
    if not samples:
        raise ValueError(f"{config.data} holds no samples with object boxes; the verifier needs captioned boxes")
    if samples[0].task is not None:  # written by the synthetic task: reuse its budgets
        return samples, tool_config_for(samples[0])
    from mapo.agent.tools import DEFAULT_TOOL_CONFIG

    return samples, DEFAULT_TOOL_CONFIG


def train_tiny_clip(config: VerifierTrainConfig, out_dir: str | Path, *, progress: bool | str = True) -> dict:
    """Build crops, train a tiny CLIP, save it to ``out_dir`` and report held-out quality.

    Returns (and writes to ``out_dir/metrics.json``) the training facts of
    :func:`train_on_pairs` plus :func:`mapo.verifier.inspect.evaluate` on the
    held-out samples, computed through :func:`mapo.verifier.load_verifier` on the
    saved directory (the code path RL uses).
    """
    from mapo.verifier.clip import load_verifier
    from mapo.verifier.inspect import evaluate, evaluate_labels

    started = time.perf_counter()
    samples, tool_config = load_training_samples(config)
    pairs = synth_pairs(samples, config.crops_per_sample, tool_config, config.seed,
                        label_frac=config.label_frac if config.label_texts else 0.0)
    train, val = split_by_group(pairs, config.val_fraction, config.seed)
    data_seconds = time.perf_counter() - started
    say(f"verifier: {len(train)} training and {len(val)} held-out crops from {len(samples)} samples "
        f"({data_seconds:.0f}s)", progress)
    metrics = {"data_seconds": round(data_seconds, 1), **train_on_pairs(train, config, out_dir, progress=progress)}
    verifier = load_verifier(out_dir)
    captions = [p for p in val if not is_label_pair(p)]  # the caption metrics on caption pairs only, as without labels
    metrics["val"] = evaluate(verifier, captions, candidates=config.eval_candidates, seed=config.seed)
    if config.label_texts:
        metrics["val_labels"] = evaluate_labels(verifier, val)
    save_metrics(metrics, out_dir)
    return metrics
