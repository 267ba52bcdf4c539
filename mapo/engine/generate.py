"""One assistant turn for a batch of episodes: a batched prefill, then a KV-cached decode loop.

:class:`TokenEpisode` is an :class:`mapo.agent.episode.Episode` as the local engine plays it:
the rules plus its token history, images and generation state (the per-episode KV
cache and vision features, whose types belong to :mod:`mapo.policy.backend`).
:class:`TurnGenerator` generates one turn for every episode of a round:

- Each episode keeps its KV cache between turns (stored per episode, re-batched with
  left padding each round), so a round prefills only the tokens an episode has not
  fed yet: its last generated token and the observation. The ``G`` episodes of a
  sample share one prefill of their common prompt (:func:`dedupe_prompts`).
- Turns stop only at an end-of-turn id (``<|im_end|>``/``<|endoftext|>``) or the
  per-turn token limit, not at ``</tool_call>``: a trained policy emits
  ``<|im_end|>`` after the call, and stop strings would cost a decode per step.
- Tokens are chosen by :func:`mapo.engine.sampling.next_tokens`; a test/demo hook can force
  a turn's text, whose ids then go through the same loop so their log-probs are
  recorded exactly like sampled ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from mapo.agent.episode import Episode
from mapo.policy.backend import EpisodeKV, QwenVLBackend, VisionFeatures
from mapo.policy.encoding import ChatEncoder
from mapo.engine.sampling import next_tokens
from mapo.engine.trajectory import Trajectory


class TokenEpisode(Episode):
    """An episode being played: the rules, its token history (``T`` so far) and its generation state.

    ``view``, ``pixel_values``, ``grid`` and ``feature`` are the global view's image, processor
    outputs and vision features (shared by the ``G`` episodes of a sample); ``rules`` are the
    :class:`~mapo.agent.episode.Episode` arguments (image, view_wh, protocol, tool, max_images, max_turns).
    """

    def __init__(
        self, sample: Any, group: int, member: int, *, view: Image.Image, pixel_values: torch.Tensor,
        grid: torch.Tensor, feature: VisionFeatures, **rules: Any,
    ) -> None:
        super().__init__(**rules)
        self.sample, self.group, self.member = sample, group, member
        self.ids: list[int] = []  # (T,)
        self.loss: list[bool] = []  # (T,) True on generated tokens
        self.seg: list[int] = []  # (T,) assistant turn index, -1 elsewhere
        self.logp: list[float] = []  # (T,) sampling log-probs, 0 elsewhere
        self.texts: list[str] = []  # decoded assistant turns (J)
        self.images: list[Image.Image] = [view]  # the global view, then each crop
        self.pixel_values: list[torch.Tensor] = [pixel_values]  # per image (patches, D)
        self.grids: list[torch.Tensor] = [grid]  # per image (3,)
        self.features: list[VisionFeatures | None] = [feature]  # per image, reused across rounds (None: queued)
        self.kv: EpisodeKV | None = None  # per layer (heads, C, d): KV of ids[:C]
        self.cached_images = 0  # images whose tokens lie in ids[:C]
        self.generator: torch.Generator | None = None  # this episode's own CPU stream, else the shared one

    def append(self, ids: list[int], *, segment: int | None = None, logps: list[float] | None = None) -> None:
        self.ids += ids
        self.loss += [segment is not None] * len(ids)
        self.seg += [-1 if segment is None else segment] * len(ids)
        self.logp += logps if logps is not None else [0.0] * len(ids)

    def to_trajectory(self) -> Trajectory:
        return Trajectory(
            sample=self.sample,
            group=self.group,
            member=self.member,
            input_ids=torch.tensor(self.ids, dtype=torch.long),
            loss_mask=torch.tensor(self.loss, dtype=torch.bool),
            segment_ids=torch.tensor(self.seg, dtype=torch.long),
            logprobs=torch.tensor(self.logp, dtype=torch.float32),
            images=list(self.images),
            image_grid_thw=torch.stack(self.grids),
            pixel_values=list(self.pixel_values),
            turns=list(self.turns),
            assistant_texts=list(self.texts),
            tool_calls=list(self.tool_calls),
            crops=list(self.crops),
            descriptions=self.descriptions,
            answer_text=self.answer_text,
            finish_reason=self.finish_reason or "max_turns",
            image_size=self.image.size,
            view_size=self.view_wh,
        )


@dataclass
class TurnOutput:
    ids: list[int]
    logps: list[float]
    ended: bool  # closed by an end-of-turn id (else cut by a token limit)


class TurnGenerator:
    """Generates one assistant turn for a batch of :class:`TokenEpisode`.

    Args:
        backend: the policy's model backend (prefill, decode, positions, KV cache).
        encoder: the policy's :class:`~mapo.policy.encoding.ChatEncoder` (end-of-turn and vision ids).
        pad_token_id: id of left-padding positions (masked out).
        sampling: ``temperature``, ``greedy``, ``top_p`` of :func:`mapo.engine.sampling.next_tokens`.
        max_new_tokens, max_total_tokens: per-turn and per-episode token limits.
        generator: the shared sampling stream, None when every episode has its own.
        forced: test/demo hook ``(group, member, turn) -> text | None``.
    """

    def __init__(
        self, backend: QwenVLBackend, encoder: ChatEncoder, pad_token_id: int, *, sampling: dict[str, Any],
        max_new_tokens: int, max_total_tokens: int, generator: torch.Generator | None,
        forced: Callable[[int, int, int], str | None] | None,
    ) -> None:
        self.backend = backend
        self.enc = encoder
        self.pad_token_id = pad_token_id
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.max_total_tokens = max_total_tokens
        self.generator = generator
        self.forced = forced
        self.device = backend.device
        self.blocked = torch.tensor(encoder.blocked_ids, dtype=torch.long, device=self.device)

    def _round_inputs(self, episodes: list[TokenEpisode]) -> tuple[dict[str, Any], Any]:
        """Model inputs for the tokens each episode has not yet fed, and the batched KV cache of the rest.

        Row ``i`` holds its cached ``C_i`` tokens left-padded to ``P = max C_i``, then its
        ``N_i`` new tokens left-padded to ``N = max N_i``; padding is masked out, so a row
        reads ``[pad | cached_i | pad | new_i]``. Positions are the model's M-RoPE indices of
        the whole history (``backend.positions`` on the unpadded row), sliced to the new tokens.
        """
        B = len(episodes)
        cached = [self.backend.cached_length(ep.kv) for ep in episodes]
        new = [len(ep.ids) - c for ep, c in zip(episodes, cached)]
        P, N = max(cached), max(new)
        ids = torch.full((B, N), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, P + N), dtype=torch.long)
        positions = torch.zeros((3, B, N), dtype=torch.long)
        for row, (ep, c, n) in enumerate(zip(episodes, cached, new)):
            history = torch.tensor(ep.ids, dtype=torch.long)
            ids[row, N - n:] = history[c:]
            mask[row, P - c: P] = 1
            mask[row, P + N - n:] = 1
            pos = self.backend.positions(history, torch.stack(ep.grids))  # (3, L)
            positions[:, row, N - n:] = pos[:, c:]
        features = [f for ep in episodes for f in ep.features[ep.cached_images:]]
        cache = self.backend.batch_cache([ep.kv for ep in episodes], P)
        inputs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "features": features,
        }
        return inputs, cache

    def _choose(
        self, logits: torch.Tensor, forced: list[list[int] | None], step: int, rows: torch.Tensor,
        generators: list[torch.Generator | None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token and its log-prob for each live row. ``logits`` (b, V); ``rows`` (b,) episode indices;
        ``generators`` one per episode (None: the shared stream)."""
        per_row = None if self.generator is not None else [generators[row] for row in rows.tolist()]
        tokens, logp_all = next_tokens(logits, self.blocked, generator=self.generator, generators=per_row, **self.sampling)
        for i, row in enumerate(rows.tolist()):
            script = forced[row]
            if script is not None:
                tokens[i] = script[step]
        return tokens, logp_all.gather(1, tokens[:, None]).squeeze(1)

    @torch.no_grad()
    def generate_turn(self, episodes: list[TokenEpisode]) -> list[TurnOutput]:
        """One assistant turn for every episode: a batched prefill of the unfed tokens, then KV-cached decoding."""
        limits = [min(self.max_new_tokens, self.max_total_tokens - len(ep.ids)) for ep in episodes]
        forced = [self._forced_ids(ep) for ep in episodes]
        limits = [len(f) if f is not None else n for f, n in zip(forced, limits)]
        # Episodes of one group start from the same prompt: prefill it once, then copy its cache rows.
        unique, expand = dedupe_prompts(episodes)
        inputs, cache = self._round_inputs(unique)
        logits, cache = self.backend.prefill(
            inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], inputs["features"], cache
        )
        mask, positions = inputs["attention_mask"], inputs["position_ids"]
        if len(unique) < len(episodes):
            index = torch.tensor(expand, device=self.device)
            self.backend.select_rows(cache, index)
            logits, mask, positions = logits[index], mask[index], positions[:, index]
        next_pos = positions.amax(dim=(0, 2)) + 1  # (B,) next text position per row
        rows = torch.arange(len(episodes), device=self.device)  # episode index of each live cache row
        results = [TurnOutput([], [], False) for _ in episodes]
        eos = torch.tensor(self.enc.eos_ids, device=self.device)
        limit_t = torch.tensor(limits, device=self.device)
        for step in range(max(limits)):
            tokens, logps = self._choose(logits, forced, step, rows, [ep.generator for ep in episodes])
            for row, tok, lp in zip(rows.tolist(), tokens.tolist(), logps.tolist()):
                results[row].ids.append(tok)
                results[row].logps.append(lp)
            ended = torch.isin(tokens, eos)
            for row in rows[ended].tolist():
                results[row].ended = True
            live = ~ended & (limit_t[rows] > step + 1)  # (b,)
            for i in (~live).nonzero().squeeze(1).tolist():
                self._keep_cache(episodes[int(rows[i])], cache, i, mask[i])
            if not bool(live.any()):
                break
            if not bool(live.all()):
                keep = live.nonzero().squeeze(1)
                self.backend.select_rows(cache, keep)
                rows, tokens, mask, next_pos = rows[keep], tokens[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = next_pos.view(1, -1, 1).expand(3, -1, 1)  # (3, b, 1) text tokens: t = h = w
            logits, next_pos = self.backend.decode(tokens, mask, positions, cache), next_pos + 1
        return results

    def _keep_cache(self, ep: TokenEpisode, cache: Any, row: int, mask: torch.Tensor) -> None:
        """Store row ``row`` of ``cache`` (its unpadded positions) as the episode's KV for the next turn.

        The cache holds every token fed so far: the history and all generated tokens but
        the last, which the next round feeds first.
        """
        ep.kv = self.backend.episode_cache(cache, row, mask)  # mask (L,): real tokens of this row
        ep.cached_images = len(ep.images)

    def _forced_ids(self, ep: TokenEpisode) -> list[int] | None:
        """Scripted ids for this turn (test hook), closed by the end-of-turn id."""
        if self.forced is None:
            return None
        text = self.forced(ep.group, ep.member, len(ep.turns))
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"forced_turns must return a string or None, got {type(text).__name__}")
        ids = self.enc.encode(text) + [self.enc.eos_ids[0]]
        if set(ids) & set(self.enc.blocked_ids):
            raise ValueError(f"forced turn text contains vision special tokens: {text[:80]!r}")
        budget = min(self.max_new_tokens, self.max_total_tokens - len(ep.ids))
        return ids[:budget]


def dedupe_prompts(episodes: list[TokenEpisode]) -> tuple[list[TokenEpisode], list[int]]:
    """Episodes with distinct histories, and for each episode the index of its representative.

    Only first turns are shared: members of one group hold the same sample's prompt
    until their first sampled token; later histories differ.
    """
    unique: list[TokenEpisode] = []
    seen: dict[Any, int] = {}
    expand = []
    for ep in episodes:
        key = ("prompt", ep.group) if not ep.turns else ("episode", id(ep))
        if key not in seen:
            seen[key] = len(unique)
            unique.append(ep)
        expand.append(seen[key])
    return unique, expand


__all__ = ["TokenEpisode", "TurnGenerator", "TurnOutput", "dedupe_prompts"]
