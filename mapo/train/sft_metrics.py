"""SFT loss and metrics: masked next-token cross-entropy with per-class weights and accuracies.

Token classes (:class:`TokenClasses`): whole-number tokens (box coordinates) and single
capital-letter tokens but "I" (glyphs, answer letters), read once from the tokenizer and passed
to :func:`masked_lm_loss`, which weighs them (``coord_weight``, ``letter_weight``) and reports
their accuracies. Formulas of every metric: docs/policy.md ("SFT metrics").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mapo.metrics import heldout
from mapo.train.sft_data import IGNORE, Transcript, answer_word_mask, collate


@dataclass(frozen=True)
class TokenClasses:
    """Which token ids are whole numbers and which single capital letters (loss weights, accuracies)."""

    numbers: torch.Tensor  # (V,) bool: the bare token (Ġ stripped) is all digits
    letters: torch.Tensor  # (V,) bool: the bare token is one capital letter other than "I"

    @classmethod
    def of(cls, tokenizer) -> TokenClasses:
        vocab = tokenizer.get_vocab()
        numbers = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
        letters = torch.zeros_like(numbers)
        for token, i in vocab.items():
            bare = token.lstrip("Ġ")
            numbers[i] = bare.isdigit()
            # The pronoun "I" is no glyph (mapo.data.synth_render.GLYPHS leaves it out) and would only pad the metric.
            letters[i] = len(bare) == 1 and "A" <= bare <= "Z" and bare != "I"
        return cls(numbers, letters)


def masked_lm_loss(
    model,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    coord_weight: float = 1.0,
    letter_weight: float = 1.0,
    word_mask: torch.Tensor | None = None,
    word_weight: float = 1.0,
    token_classes: TokenClasses | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean cross-entropy over labelled tokens; logits only where a label follows.

    With ``coord_weight`` / ``letter_weight`` != 1, whole-number tokens (the box coordinates)
    and single capital-letter tokens (glyphs and answer letters) weigh that much and the mean
    is weighted: ``sum_t w_t CE_t / sum_t w_t``. Both token classes come from
    ``token_classes`` (:meth:`TokenClasses.of`; without it no token is in either class). ``word_mask`` (B, T), from :func:`answer_word_mask`, marks the
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
    numbers = _token_class_mask(picked, token_classes.numbers if token_classes else None) & valid  # (B, K)
    letters = _token_class_mask(picked, token_classes.letters if token_classes else None) & valid  # (B, K)
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


def _token_class_mask(ids: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
    """(B, K) bool: ``table[ids]`` (ids -100 read as 0 and masked by the caller); all False without a table."""
    return table[ids.clamp(min=0)] if table is not None else torch.zeros_like(ids, dtype=torch.bool)


@torch.no_grad()
def teacher_forced_eval(
    policy, cfg: Any, transcripts: list[Transcript], token_classes: TokenClasses | None = None
) -> dict[str, float]:
    """Loss and token accuracies on held-out oracle transcripts (batches of ``cfg.batch_size``; ``cfg``: an SFTConfig)."""
    was_training = policy.model.training
    policy.model.eval()
    totals: dict[str, float] = {"loss": 0.0, "token_acc": 0.0, "tokens": 0.0}
    for i in range(0, len(transcripts), cfg.batch_size):
        chunk = transcripts[i : i + cfg.batch_size]
        inputs, labels = collate(chunk, policy, cfg.data.max_length)
        words = answer_word_mask(chunk, labels, policy.tokenizer, option_scan=cfg.data.scan_words_weighted,
        search_words=cfg.data.search_words_weighted)
        loss, stats = masked_lm_loss(policy.model, inputs, labels, word_mask=words, token_classes=token_classes)
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


# The held-out rollout metrics an SFT run logs, ``heldout/<name>`` <- :func:`mapo.metrics.heldout.evaluate`'s key.
HELDOUT_KEYS = {
    "accuracy": "letter_accuracy",
    "valid_call_rate": "valid_call_rate",
    "mean_iou": "iou_mean",
    "first_zoom_hit@0.5": "hit_rate",
    "tool_use_rate": "tool_use_rate",
    "turns_per_trajectory": "turns_mean",
    "format_error_turns": "format_error_turns",
    "n": "n",
}


def rollout_eval(policy, cfg: Any, samples: list) -> dict[str, float]:
    """Greedy multi-turn rollouts on held-out samples (:func:`mapo.metrics.heldout.evaluate`) as ``heldout/*`` metrics.

    ``heldout/accuracy`` is the answer-letter accuracy; a sample without a target box
    would count in ``mean_iou``/``first_zoom_hit@0.5`` with IoU 0 (synthetic samples
    always have one). Formulas: docs/policy.md ("SFT metrics").
    """
    from mapo.data.task import tool_config_for
    from mapo.engine.rollout import RolloutConfig

    if not samples:
        return {}
    rc = RolloutConfig(
        group_size=1, greedy=True, max_turns=cfg.eval.max_turns, max_new_tokens_per_turn=cfg.eval.max_new_tokens_per_turn,
        batch_size=32, tool=tool_config_for(samples[0]), protocol=cfg.protocol,
    )
    metrics = heldout.evaluate(samples, policy, rc, untargeted_iou=0.0).metrics
    return {f"heldout/{name}": metrics[key] for name, key in HELDOUT_KEYS.items()}
