"""What a rollout produces and what a training step reads: ``Trajectory`` and ``TrainBatch``.

A :class:`Trajectory` is one played episode, token-exact (ids, loss mask, segment
ids, sampling log-probs) with its images and its parsed turns and tool calls.
:func:`collate` pads ``B`` of them into one :class:`TrainBatch`, built once per
training step; :meth:`TrainBatch.select` cuts the rows of a mini- or micro-batch out
of it, equal to collating those trajectories alone. :func:`sequence_logprobs` is the
training forward over a batch: the same tempered distribution the rollout sampled
from, so ``exp(new - old)`` is the exact importance ratio.

Shapes: ``B`` trajectories, ``T`` tokens, ``K`` observations, ``J`` assistant turns,
``I`` images, ``P`` image patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from mapo.policy.backend import backend_for
from mapo.policy.encoding import IMAGE_PAD
from mapo.agent.episode import ExecutedCall
from mapo.agent.protocol import Turn


@dataclass
class Trajectory:
    """One episode, token-exact. ``T`` tokens, ``K`` observations, ``J`` assistant segments.

    Observation ``k`` (1-based) is the result of the tool call in segment ``k-1``;
    ``tool_calls``, ``crops`` and ``descriptions`` have one entry per observation
    (index ``k-1``). ``crops[k-1]`` is None for an error observation (text only);
    ``descriptions[k-1]`` is the ``<description>`` that opens segment ``k``, None
    when missing or when no segment followed.
    """

    sample: Any  # mapo.data.Sample
    group: int  # index of the sample in the rollout's input (the GRPO group id)
    member: int  # index within the group, 0..G-1
    input_ids: torch.Tensor  # (T,) long: prompt, assistant turns, observations
    loss_mask: torch.Tensor  # (T,) bool, True exactly on policy-generated tokens
    segment_ids: torch.Tensor  # (T,) long, j on tokens of assistant turn j, -1 elsewhere
    logprobs: torch.Tensor  # (T,) float32, sampling log-prob of each generated token, 0 elsewhere
    images: list[Image.Image]  # the global view then each crop, in sequence order (K_img + 1)
    image_grid_thw: torch.Tensor  # (K_img + 1, 3) long, Qwen's (t, h, w) patch grid per image
    pixel_values: list[torch.Tensor]  # per image (patches, C*t*p*p), as the processor returned them
    turns: list[Turn]  # parsed assistant turns (J)
    assistant_texts: list[str]  # decoded assistant turns (J), without the end-of-turn id
    tool_calls: list[ExecutedCall]  # (K)
    crops: list[Image.Image | None]  # (K)
    descriptions: list[str | None]  # (K)
    answer_text: str | None  # the <answer> content, None without one
    finish_reason: str  # one of mapo.agent.episode.FINISH_REASONS
    image_size: tuple[int, int]  # original (width, height)
    view_size: tuple[int, int]  # (width, height) of the global view the model saw

    @property
    def num_generated(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_observations(self) -> int:
        return len(self.tool_calls)

    @property
    def used_tool(self) -> bool:
        """At least one tool call returned an image."""
        return any(c.valid for c in self.tool_calls)


@dataclass(frozen=True)
class TrainBatch:
    """``B`` trajectories right-padded to ``T`` tokens: the inputs of one training forward.

    Images are concatenated trajectory by trajectory, each trajectory's in sequence
    order; ``images_per_row`` says how many belong to each row (what :meth:`select` needs).
    """

    input_ids: torch.Tensor  # (B, T) long, padded with the policy's pad id
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    loss_mask: torch.Tensor  # (B, T) bool, True on policy-generated tokens
    segment_ids: torch.Tensor  # (B, T) long, assistant segment index, -1 outside the loss
    old_logprobs: torch.Tensor  # (B, T) float32, sampling log-probs, 0 outside the loss
    mm_token_type_ids: torch.Tensor  # (B, T) long, 1 on image placeholder tokens, 0 elsewhere
    pixel_values: torch.Tensor  # (P, D) every image's patches, in the order above
    image_grid_thw: torch.Tensor  # (I, 3) long, each image's (t, h, w) patch grid
    images_per_row: torch.Tensor  # (B,) long, images of each row (they sum to I)
    group: torch.Tensor  # (B,) long, the GRPO group id of each trajectory
    blocked_token_ids: torch.Tensor  # (V_b,) long, ids excluded from the sampling distribution

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's training forward (its own M-RoPE from ``mm_token_type_ids``)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
        }

    def select(self, rows: Sequence[int]) -> TrainBatch:
        """The batch of rows ``rows`` (b of them, in that order), cut to their longest length ``T'``.

        Equal, tensor for tensor, to :func:`collate` of those trajectories alone, so a
        step collates once and its mini-batches read the same numbers as before.
        """
        rows = [int(r) for r in rows]
        if not rows:
            raise ValueError("select needs at least one row")
        index = torch.tensor(rows, dtype=torch.long)
        length = int(self.attention_mask[index].sum(dim=1).max())  # T': right padding, so a prefix
        patches = self.image_grid_thw.prod(dim=1)  # (I,) patches per image
        image_start = torch.cumsum(self.images_per_row, 0) - self.images_per_row  # (B,) first image of each row
        patch_start = torch.cumsum(patches, 0) - patches  # (I,) first patch of each image
        images, pixels = [], []
        for r in rows:
            first, count = int(image_start[r]), int(self.images_per_row[r])
            images += range(first, first + count)
            start, stop = int(patch_start[first]), int(patch_start[first] + patches[first:first + count].sum())
            pixels.append(self.pixel_values[start:stop])

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[index, :length].contiguous()  # (b, T')

        return TrainBatch(
            input_ids=cut(self.input_ids),
            attention_mask=cut(self.attention_mask),
            loss_mask=cut(self.loss_mask),
            segment_ids=cut(self.segment_ids),
            old_logprobs=cut(self.old_logprobs),
            mm_token_type_ids=cut(self.mm_token_type_ids),
            pixel_values=torch.cat(pixels),
            image_grid_thw=self.image_grid_thw[torch.tensor(images, dtype=torch.long)],
            images_per_row=self.images_per_row[index],
            group=self.group[index],
            blocked_token_ids=self.blocked_token_ids,
        )


def collate(trajectories: Sequence[Trajectory], policy: Any) -> TrainBatch:
    """Right-pad ``B`` trajectories into one :class:`TrainBatch` (``T`` = the longest trajectory)."""
    if not trajectories or not all(isinstance(t, Trajectory) for t in trajectories):
        raise ValueError("collate needs a non-empty sequence of Trajectory")
    image_pad_id = int(policy.tokenizer.get_vocab()[IMAGE_PAD])
    T = max(len(t.input_ids) for t in trajectories)
    B = len(trajectories)
    input_ids = torch.full((B, T), int(policy.pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    segment_ids = torch.full((B, T), -1, dtype=torch.long)
    old_logprobs = torch.zeros((B, T), dtype=torch.float32)
    for row, t in enumerate(trajectories):
        n = len(t.input_ids)
        input_ids[row, :n] = t.input_ids
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = t.loss_mask
        segment_ids[row, :n] = t.segment_ids
        old_logprobs[row, :n] = t.logprobs
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        segment_ids=segment_ids,
        old_logprobs=old_logprobs,
        mm_token_type_ids=(input_ids == image_pad_id).long() * attention_mask,
        pixel_values=torch.cat([pv for t in trajectories for pv in t.pixel_values]),
        image_grid_thw=torch.cat([t.image_grid_thw for t in trajectories]),
        images_per_row=torch.tensor([len(t.image_grid_thw) for t in trajectories], dtype=torch.long),
        group=torch.tensor([t.group for t in trajectories], dtype=torch.long),
        blocked_token_ids=torch.tensor(list(policy.vision_token_ids), dtype=torch.long),
    )


def sequence_logprobs(
    model: Any, batch: TrainBatch, *, temperature: float = 1.0, return_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``log p(token_t | tokens_<t)`` for every position of a batch, (B, T).

    One training-style forward (the model computes its own M-RoPE positions from
    ``mm_token_type_ids``), tempered by ``temperature`` with ``blocked_token_ids``
    removed from the distribution, as during sampling. Only positions where
    ``loss_mask`` is True are projected onto the vocabulary (memory: N x V, not
    B x T x V); all other positions, and t = 0, are 0. Differentiable when grad
    is enabled. With ``return_entropy`` it also returns the (B, T) entropy of the
    same tempered distribution at those positions (0 elsewhere), from the logits
    already computed (the trainer's entropy metric and bonus).
    """
    if not isinstance(batch, TrainBatch):
        raise ValueError(f"batch must be a TrainBatch (build it with mapo.engine.trajectory.collate), got {type(batch).__name__}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    backend = backend_for(model)
    device = backend.device
    ids = batch.input_ids.to(device)
    hidden = backend.hidden_states(batch.model_inputs())  # (B, T, H)
    targets = batch.loss_mask.to(device).clone()
    targets[:, 0] = False  # nothing predicts the first token
    rows, cols = targets.nonzero(as_tuple=True)  # N positions whose token is scored
    logits = backend.lm_head(hidden[rows, cols - 1]).float() / temperature  # (N, V)
    if batch.blocked_token_ids.numel():
        logits[:, batch.blocked_token_ids.to(device)] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=-1)  # (N, V)
    logp = log_probs.gather(1, ids[rows, cols][:, None]).squeeze(1)  # (N,)
    out = torch.zeros(ids.shape, dtype=logp.dtype, device=device)
    out = out.index_put((rows, cols), logp)
    if not return_entropy:
        return out
    # Blocked ids have probability 0 and log-prob -inf: 0 * -inf would be NaN, so they are zeroed.
    finite = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))
    entropy = -(log_probs.exp() * finite).sum(dim=-1)  # (N,)
    return out, torch.zeros_like(out).index_put((rows, cols), entropy)


__all__ = ["TrainBatch", "Trajectory", "collate", "sequence_logprobs"]
