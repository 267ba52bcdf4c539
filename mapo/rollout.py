"""The rollout engine: a batched multi-turn agent loop with the zoom-in tool.

:func:`rollout` plays ``G`` episodes per sample. Each round it takes up to
``batch_size`` unfinished episodes, generates one assistant turn for all of them
at once (one prefill, then a KV-cached decode loop), parses each turn with
:func:`mapo.protocol.parse_turn`, runs the zoom-in tool, and appends the
observation (crop image + text) **as token ids**. An episode ends on an answer,
a turn without an action, or a budget (turns, tokens, images). The result is one
:class:`Trajectory` per episode; :func:`collate` pads a list of them for a
training forward and :func:`sequence_logprobs` is that forward.

Model-specific work (vision features, M-RoPE positions, the KV cache, the prefill,
decode and training forwards) goes through the policy's backend
(:func:`mapo.policy.backend.backend_for`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL); this module
holds none. The zoom tool's view is smart-resized with the backend's patch x merge
factor (28 or 32 px), which replaces ``config.tool.factor``.

Token exactness. Generated ids are kept as ids; text is decoded only to be
parsed. Observation ids come from tokenizing *only* the observation message as
the chat template renders it (the template's difference between a conversation
with and without it), with the image placeholder expanded to as many
``<|image_pad|>`` ids as the crop has merged patches. The per-token sampling
log-probs are ``log_softmax(logits / temperature)`` over the vocabulary with the
vision special tokens removed (they can never be sampled), which is exactly
what :func:`sequence_logprobs` computes, so old/new importance ratios are exact
(``tests/test_rollout.py`` checks agreement within 1e-4).

Choices and departures (nothing here is specified by the MAPO paper):

- Each episode keeps its KV cache between turns (stored per episode, re-batched
  with left padding each round), so a round prefills only the tokens an episode
  has not fed yet: its last generated token and the observation. The ``G``
  episodes of a sample share one prefill of their common prompt. Vision
  features are computed once per image; the crops of one round go through the
  vision tower in one call.
- ``top_p < 1`` and ``greedy`` change how tokens are *chosen*, but the recorded
  log-prob is still the full tempered distribution (top-p-free), so with them
  the recorded log-probs are not those of the behaviour policy.
- A tool call on the last allowed turn is not executed (there is no turn left
  to look at its result); the episode ends with ``max_turns``.
- The budget is checked *before* an observation is appended (DESIGN §5); an
  observation that does not fit ends the episode with ``max_tokens`` or
  ``max_images`` instead of being truncated.
- Turns stop only at an end-of-turn id (``<|im_end|>``/``<|endoftext|>``) or the
  per-turn token limit, not at ``</tool_call>``: a trained policy emits
  ``<|im_end|>`` after the call, and stop strings would cost a decode per step.
- Continuous batching is per turn: a finished episode's slot is refilled at the
  next round, so with one shared ``generator`` results depend on ``batch_size``.
  A per-episode generator factory (``generator=lambda group, member: ...``, what
  ``mapo train`` uses) gives every episode its own stream, consumed only by its
  own tokens (inverse-CDF sampling from one uniform per token), so an episode's
  tokens do not depend on which other episodes share its batch: a data-parallel
  rank that rolls out half of the prompts samples what one process would.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from mapo import protocol as protocol_mod
from mapo.config import knob
from mapo.protocol import ProtocolConfig, Turn
from mapo.policy.backend import EpisodeKV, VisionFeatures, backend_for
from mapo.tools import ToolConfig, view_size, with_factor, zoom_in

IMAGE_PAD = "<|image_pad|>"

FINISH_REASONS = (
    "answer",  # the turn held an <answer>
    "no_tool_call",  # the turn ended (end-of-turn id) with neither a tool call nor an answer
    "max_new_tokens",  # the turn hit max_new_tokens_per_turn with neither a tool call nor an answer
    "max_turns",  # the last allowed turn made a tool call
    "max_tokens",  # the next turn or observation would exceed max_total_tokens
    "max_images",  # the next observation image would exceed max_images
    "prompt_too_long",  # the prompt alone leaves no room for a single generated token
)


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling, budgets and batching of the agent loop."""

    group_size: int = knob(4, "trajectories per sample (G); one group per sample")
    max_turns: int = knob(4, "assistant turns per trajectory")
    max_new_tokens_per_turn: int = knob(96, "generated tokens per assistant turn")
    max_total_tokens: int = knob(2048, "tokens per trajectory: prompt, turns and observations")
    max_images: int = knob(5, "images per trajectory, the global view included")
    temperature: float = knob(1.0, "softmax temperature of sampling and of the recorded log-probs")
    top_p: float = knob(1.0, "nucleus sampling mass; the recorded log-probs stay top-p-free")
    greedy: bool = knob(False, "take the most likely token instead of sampling")
    batch_size: int = knob(32, "episodes generated together in one forward")
    seed: int = knob(0, "seed of the sampling generator when none is passed")
    tool: ToolConfig = knob(factory=ToolConfig, help="zoom-in tool: view and observation pixel budgets")
    protocol: ProtocolConfig = knob(factory=ProtocolConfig, help="tags, prompts and observation texts")

    def __post_init__(self) -> None:
        for name in ("group_size", "max_turns", "max_new_tokens_per_turn", "max_total_tokens", "max_images", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(
                f"temperature must be > 0 (use greedy=true for argmax decoding), got {self.temperature!r}"
            )
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.tool, ToolConfig):
            raise ValueError(f"tool must be a mapo.tools.ToolConfig, got {type(self.tool).__name__}")
        if not isinstance(self.protocol, ProtocolConfig):
            raise ValueError(f"protocol must be a mapo.protocol.ProtocolConfig, got {type(self.protocol).__name__}")


@dataclass(frozen=True)
class ToolCallRecord:
    """One executed tool call, i.e. one observation.

    ``raw_bbox`` is the box as the model wrote it (view pixels, None if unreadable);
    ``bbox_view`` the validated box the tool used (view pixels) and
    ``box_original`` the same box in original pixels; both None when invalid.
    """

    raw_bbox: tuple[float, float, float, float] | None
    bbox_view: tuple[float, float, float, float] | None
    box_original: tuple[float, float, float, float] | None
    label: str | None
    valid: bool
    error: str | None


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
    tool_calls: list[ToolCallRecord]  # (K)
    crops: list[Image.Image | None]  # (K)
    descriptions: list[str | None]  # (K)
    answer_text: str | None  # the <answer> content, None without one
    finish_reason: str  # one of FINISH_REASONS
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


# ----------------------------------------------------------------------------- policy glue


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model: Any):
    """Sample with dropout off (the recorded log-probs must be deterministic), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _Encoder:
    """Turns prompts, observations and images into ids and vision inputs, via the chat template."""

    def __init__(self, policy: Any, config: RolloutConfig) -> None:
        self.policy = policy
        self.config = config
        self.tok = policy.tokenizer
        vocab = self.tok.get_vocab()
        if IMAGE_PAD not in vocab:
            raise ValueError(f"the policy's tokenizer has no {IMAGE_PAD} token; is it a Qwen-VL tokenizer?")
        self.image_pad_id = int(vocab[IMAGE_PAD])
        self.merge = int(policy.processor.image_processor.merge_size)
        self.eos_ids = [int(i) for i in policy.eos_token_ids]
        self.blocked_ids = [int(i) for i in policy.vision_token_ids]
        if not self.eos_ids:
            raise ValueError("the policy's tokenizer has no end-of-turn token (<|im_end|> or <|endoftext|>)")
        self.turn_close_ids = self._turn_close_ids()

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _turn_close_ids(self) -> list[int]:
        """Ids the template puts after an assistant message's content (Qwen: ``<|im_end|>\\n``)."""
        sentinel = "\u2063MAPO\u2063"
        text = self.render([{"role": "system", "content": "s"}, {"role": "assistant", "content": sentinel}], False)
        return self.encode(text[text.index(sentinel) + len(sentinel):])

    def with_images(self, text: str, grids: list[torch.Tensor]) -> list[int]:
        """Ids of ``text``, each ``<|image_pad|>`` expanded to its image's number of merged patches."""
        parts = text.split(IMAGE_PAD)
        if len(parts) != len(grids) + 1:
            raise ValueError(
                f"the chat template rendered {len(parts) - 1} image placeholder(s) for {len(grids)} image(s); "
                "check the tokenizer's chat template"
            )
        ids = self.encode(parts[0])
        for grid, part in zip(grids, parts[1:]):
            ids += [self.image_pad_id] * (int(grid.prod()) // self.merge**2)
            ids += self.encode(part)
        return ids

    def prompt_ids(self, sample: Any, grid: torch.Tensor) -> list[int]:
        messages = protocol_mod.initial_messages(sample.question, sample.options, self.config.protocol)
        return self.with_images(self.render(messages, True), [grid])

    def observation_ids(self, error: str | None, grid: torch.Tensor | None) -> list[int]:
        """Ids of one observation message and the next assistant header, from the template alone."""
        system = [{"role": "system", "content": "s"}]
        message = protocol_mod.observation_message(self.config.protocol, error=error)
        before = self.render(system, False)
        after = self.render(system + [message], True)
        if not after.startswith(before):
            raise ValueError("the chat template does not render conversations incrementally; cannot isolate observations")
        return self.with_images(after[len(before):], [] if grid is None else [grid])

    def close_turn_ids(self, generated: list[int]) -> list[int]:
        """The template's end-of-message ids not already generated by the policy."""
        close = self.turn_close_ids
        if close and generated and generated[-1] == close[0]:
            return close[1:]
        return close

    def process_image(self, image: Image.Image, *, is_view: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values (patches, D), grid (3,))`` of an image already smart-resized by the tool.

        The global view must pass through the processor unchanged (its pixels are the
        model's coordinate frame), so a processor that would resize it is an error. A
        crop may be resized by the processor (no coordinates refer to it); its grid is
        whatever the processor returns, so ids and features always agree.
        """
        from mapo.policy.processor import check_no_resize

        if is_view:
            check_no_resize(self.policy.processor, image.height, image.width)
        out = self.policy.processor.image_processor(images=[image], return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"][0].long()


# ----------------------------------------------------------------------------- episodes


@dataclass
class _Episode:
    """Mutable state of one episode while it is being played."""

    sample: Any
    group: int
    member: int
    image: Image.Image  # original
    view_wh: tuple[int, int]
    ids: list[int]
    loss: list[bool]
    seg: list[int]
    logp: list[float]
    images: list[Image.Image]
    pixel_values: list[torch.Tensor]
    grids: list[torch.Tensor]
    features: list[VisionFeatures | None]  # vision features per image, reused across rounds (None: queued)
    kv: EpisodeKV | None = None  # per layer (heads, C, d): KV of ids[:C]
    cached_images: int = 0  # images whose tokens lie in ids[:C]
    turns: list[Turn] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    crops: list[Image.Image | None] = field(default_factory=list)
    finish_reason: str | None = None
    generator: torch.Generator | None = None  # this episode's own CPU stream (per-episode sampling), else None

    def append(self, ids: list[int], *, segment: int | None = None, logps: list[float] | None = None) -> None:
        self.ids += ids
        self.loss += [segment is not None] * len(ids)
        self.seg += [-1 if segment is None else segment] * len(ids)
        self.logp += logps if logps is not None else [0.0] * len(ids)

    def to_trajectory(self) -> Trajectory:
        descriptions = [self.turns[k].description if k < len(self.turns) else None for k in range(1, len(self.tool_calls) + 1)]
        answer = self.turns[-1].answer if self.turns and self.finish_reason == "answer" else None
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
            descriptions=descriptions,
            answer_text=answer,
            finish_reason=self.finish_reason or "max_turns",
            image_size=self.image.size,
            view_size=self.view_wh,
        )


@dataclass
class _TurnOutput:
    ids: list[int]
    logps: list[float]
    ended: bool  # closed by an end-of-turn id (else cut by a token limit)


class _Engine:
    def __init__(
        self, policy: Any, config: RolloutConfig, generator: torch.Generator | Callable[[int, int], torch.Generator],
        forced: Callable | None,
    ) -> None:
        self.policy = policy
        self.model = policy.model
        self.backend = backend_for(policy.model)
        self.config = config
        # The view<->original mapping uses the policy's own patch x merge factor (28 or 32 px).
        self.tool = with_factor(config.tool, self.backend.factor)
        self.enc = _Encoder(policy, config)
        self.device = _model_device(policy.model)
        # A torch.Generator is not callable: a callable is the per-episode factory (group, member) -> generator.
        self.episode_generator = generator if callable(generator) else None
        self.generator = None if callable(generator) else generator
        self.forced = forced
        self.blocked = torch.tensor(self.enc.blocked_ids, dtype=torch.long, device=self.device)
        self.unencoded: list[tuple[_Episode, int]] = []  # crops awaiting encode_observations: (episode, image index)

    # --- episode setup ---------------------------------------------------------

    def vision_features(self, pixel_values: torch.Tensor, grid: torch.Tensor) -> VisionFeatures:
        return self.backend.encode_images(pixel_values, grid[None])[0]

    def encode_observations(self) -> None:
        """Vision features of every crop observed this round, in one vision-tower call.

        ``_observe`` queues its crop instead of encoding it: one call for the whole batch costs
        little more than one call for one crop on CPU (the tower attends within each image, so
        the features are those of separate calls).
        """
        if not self.unencoded:
            return
        pixel_values = torch.cat([ep.pixel_values[i] for ep, i in self.unencoded])  # (sum patches, C)
        grids = torch.stack([ep.grids[i] for ep, i in self.unencoded])  # (n, 3)
        for (ep, i), feature in zip(self.unencoded, self.backend.encode_images(pixel_values, grids)):
            ep.features[i] = feature
        self.unencoded = []

    def start(self, sample: Any, group: int) -> list[_Episode]:
        """The ``G`` episodes of one sample, sharing the prompt (computed once)."""
        image = sample.load_image()
        view_wh = view_size(image.size, self.tool)
        view = image if image.size == view_wh else image.resize(view_wh, Image.Resampling.BICUBIC)
        pixel_values, grid = self.enc.process_image(view, is_view=True)
        ids = self.enc.prompt_ids(sample, grid)
        feature = self.vision_features(pixel_values, grid)
        episodes = []
        for member in range(self.config.group_size):
            ep = _Episode(sample, group, member, image, view_wh, [], [], [], [], [view], [pixel_values], [grid], [feature])
            if self.episode_generator is not None:
                ep.generator = self.episode_generator(group, member)
            ep.append(ids)
            if len(ids) + 1 > self.config.max_total_tokens:
                ep.finish_reason = "prompt_too_long"
            episodes.append(ep)
        return episodes

    # --- one turn for a batch of episodes ----------------------------------------

    def _round_inputs(self, episodes: list[_Episode]) -> tuple[dict[str, Any], Any]:
        """Model inputs for the tokens each episode has not yet fed, and the batched KV cache of the rest.

        Row ``i`` holds its cached ``C_i`` tokens left-padded to ``P = max C_i``, then its
        ``N_i`` new tokens left-padded to ``N = max N_i``; padding is masked out, so a row
        reads ``[pad | cached_i | pad | new_i]``. Positions are Qwen's M-RoPE indices of the
        whole history (``get_rope_index`` on the unpadded row), sliced to the new tokens.
        """
        B = len(episodes)
        cached = [self.backend.cached_length(ep.kv) for ep in episodes]
        new = [len(ep.ids) - c for ep, c in zip(episodes, cached)]
        P, N = max(cached), max(new)
        ids = torch.full((B, N), self.policy.pad_token_id, dtype=torch.long)
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
    ):
        """Next token and its log-prob for each live row. ``logits`` (b, V); ``rows`` (b,) episode indices;
        ``generators`` one per episode (None: the shared stream)."""
        scaled = logits.float() / self.config.temperature
        scaled[:, self.blocked] = float("-inf")
        logp_all = torch.log_softmax(scaled, dim=-1)  # (b, V)
        if self.config.greedy:
            tokens = logp_all.argmax(dim=-1)
        else:
            probs = logp_all.exp()
            if self.config.top_p < 1.0:
                probs = _top_p_filter(probs, self.config.top_p)
            if self.episode_generator is None:  # one stream for the batch: one uniform per row
                u = torch.rand(probs.shape[0], generator=self.generator, dtype=torch.float64, device=self.generator.device)
                tokens = _inverse_cdf(probs, u)
            else:
                tokens = _sample_per_row(probs, [generators[row] for row in rows.tolist()])
        for i, row in enumerate(rows.tolist()):
            script = forced[row]
            if script is not None:
                tokens[i] = script[step]
        return tokens, logp_all.gather(1, tokens[:, None]).squeeze(1)

    @torch.no_grad()
    def generate_turn(self, episodes: list[_Episode]) -> list[_TurnOutput]:
        """One assistant turn for every episode: a batched prefill of the unfed tokens, then KV-cached decoding."""
        cfg = self.config
        limits = [min(cfg.max_new_tokens_per_turn, cfg.max_total_tokens - len(ep.ids)) for ep in episodes]
        forced = [self._forced_ids(ep) for ep in episodes]
        limits = [len(f) if f is not None else n for f, n in zip(forced, limits)]
        # Episodes of one group start from the same prompt: prefill it once, then copy its cache rows.
        unique, expand = _dedupe_prompts(episodes)
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
        results = [_TurnOutput([], [], False) for _ in episodes]
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

    def _keep_cache(self, ep: _Episode, cache: Any, row: int, mask: torch.Tensor) -> None:
        """Store row ``row`` of ``cache`` (its unpadded positions) as the episode's KV for the next turn.

        The cache holds every token fed so far: the history and all generated tokens but
        the last, which the next round feeds first.
        """
        ep.kv = self.backend.episode_cache(cache, row, mask)  # mask (L,): real tokens of this row
        ep.cached_images = len(ep.images)

    def _forced_ids(self, ep: _Episode) -> list[int] | None:
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
        budget = min(self.config.max_new_tokens_per_turn, self.config.max_total_tokens - len(ep.ids))
        return ids[:budget]

    # --- after a turn: parse, act, observe --------------------------------------

    def advance(self, ep: _Episode, out: _TurnOutput) -> None:
        cfg = self.config
        segment = len(ep.turns)
        ep.append(out.ids, segment=segment, logps=out.logps)
        body = out.ids[:-1] if out.ended else out.ids
        text = self.enc.tok.decode(body, skip_special_tokens=True)
        turn = protocol_mod.parse_turn(text, cfg.protocol)
        ep.turns.append(turn)
        ep.texts.append(text)
        at_token_limit = len(ep.ids) >= cfg.max_total_tokens
        if turn.answer is not None:
            ep.finish_reason = "answer"
        elif turn.tool_call is None:
            ep.finish_reason = "no_tool_call" if out.ended else ("max_tokens" if at_token_limit else "max_new_tokens")
        elif len(ep.turns) >= cfg.max_turns:
            ep.finish_reason = "max_turns"
        else:
            self._observe(ep, turn, out.ids)

    def _observe(self, ep: _Episode, turn: Turn, generated: list[int]) -> None:
        """Run the tool call of ``turn`` and append its observation, if the budgets allow."""
        cfg = self.config
        call = turn.tool_call
        crop, record = None, None
        if call.bbox is None:
            reason = next((e for e in turn.errors if e.startswith("tool_call_")), "the tool call could not be read")
            record = ToolCallRecord(None, None, None, call.label, False, reason)
        else:
            result = zoom_in(ep.image, call.bbox, ep.view_wh, self.tool)
            record = ToolCallRecord(call.bbox, result.box_view, result.box_original, call.label, result.error is None, result.error)
            crop = result.crop
        if crop is not None and len(ep.images) + 1 > cfg.max_images:
            ep.finish_reason = "max_images"
            return
        pixel_values = grid = None
        if crop is not None:
            pixel_values, grid = self.enc.process_image(crop, is_view=False)
        shown_error = None if record.error is None else _readable(record.error)
        obs_ids = self.enc.close_turn_ids(generated) + self.enc.observation_ids(shown_error, grid)
        if len(ep.ids) + len(obs_ids) + 1 > cfg.max_total_tokens:
            ep.finish_reason = "max_tokens"
            return
        ep.append(obs_ids)
        ep.tool_calls.append(record)
        ep.crops.append(crop)
        if crop is not None:
            ep.images.append(crop)
            ep.pixel_values.append(pixel_values)
            ep.grids.append(grid)
            ep.features.append(None)  # filled by encode_observations before the next turn
            self.unencoded.append((ep, len(ep.features) - 1))


def _dedupe_prompts(episodes: list[_Episode]) -> tuple[list[_Episode], list[int]]:
    """Episodes with distinct histories, and for each episode the index of its representative.

    Only first turns are shared: members of one group hold the same sample's prompt
    until their first sampled token; later histories differ.
    """
    unique: list[_Episode] = []
    seen: dict[Any, int] = {}
    expand = []
    for ep in episodes:
        key = ("prompt", ep.group) if not ep.turns else ("episode", id(ep))
        if key not in seen:
            seen[key] = len(unique)
            unique.append(ep)
        expand.append(seen[key])
    return unique, expand


def _readable(error: str) -> str:
    """The sentence of a protocol error (``"tool_call_json: the call ..."`` -> ``"the call ..."``)."""
    code, sep, sentence = error.partition(": ")
    return sentence if sep and code in protocol_mod.ERROR_CODES else error


def _sample_per_row(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (b, V), row ``i`` drawn with ``generators[i]`` (CPU generators).

    Inverse-CDF sampling from one float64 uniform per row, so each row consumes exactly
    one draw of its own stream whatever the batch holds (and the same on CPU or GPU).
    """
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])  # (b,)
    return _inverse_cdf(probs, u)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids (b,) for rows of ``probs`` (b, V, unnormalised) and uniforms ``u`` (b,) in [0, 1).

    Cheaper on CPU than ``torch.multinomial`` for a batch of rows (one cumsum and one search).
    """
    cdf = probs.double().cumsum(dim=-1)  # (b, V)
    # right=True: the first index whose cdf exceeds u * total, so zero-probability ids are never chosen.
    tokens = torch.searchsorted(cdf, (u.to(probs.device) * cdf[:, -1])[:, None], right=True).squeeze(1)
    return tokens.clamp_(max=probs.shape[1] - 1)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row beyond cumulative mass ``top_p`` (the top token always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # (b, V) mass before this token exceeds top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


# ----------------------------------------------------------------------------- public API


def rollout(
    samples: Sequence[Any],
    policy: Any,
    config: RolloutConfig,
    *,
    generator: torch.Generator | Callable[[int, int], torch.Generator] | None = None,
    progress: bool = False,
    forced_turns: Callable[[int, int, int], str | None] | None = None,
) -> list[Trajectory]:
    """Play ``config.group_size`` episodes per sample; returns them grouped by sample index.

    Args:
        samples: ``mapo.data.Sample`` objects (``load_image``, ``question``, ``options``).
        policy: ``mapo.policy.Policy`` (a Qwen2-VL/Qwen2.5-VL/Qwen3-VL model, its processor and tokenizer).
        config: sampling, budgets and batching.
        generator: the sampling random stream (default: seeded with ``config.seed``), or a
            factory ``(group, member) -> torch.Generator`` (CPU) giving each episode its own
            stream, which makes an episode's tokens independent of its batch companions.
        progress: print one line per round to stderr.
        forced_turns: test/demo hook ``(group, member, turn) -> text | None``: when it returns
            text, that turn's tokens are the text's ids plus the end-of-turn id (teacher-forced
            through the same decode loop, so their log-probs are recorded exactly like sampled
            ones); ``None`` samples the turn.

    Returns:
        ``len(samples) * G`` trajectories, ordered by (group, member).
    """
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
        raise ValueError(f"samples must be a sequence of mapo.data.Sample, got {type(samples).__name__}")
    if not isinstance(config, RolloutConfig):
        raise ValueError(f"config must be a RolloutConfig, got {type(config).__name__}")
    for name in ("model", "processor", "tokenizer"):
        if not hasattr(policy, name):
            raise ValueError(f"policy must be a mapo.policy.Policy (with .{name}), got {type(policy).__name__}")
    if generator is None:
        generator = torch.Generator(device=_model_device(policy.model)).manual_seed(config.seed)
    engine = _Engine(policy, config, generator, forced_turns)
    done: list[_Episode] = []
    with _eval_mode(policy.model), torch.no_grad():
        pending = [ep for group, sample in enumerate(samples) for ep in engine.start(sample, group)]
        pending.reverse()  # pop() from the end keeps sample order
        active: list[_Episode] = []
        rounds, started = 0, time.perf_counter()
        while pending or active:
            while pending and len(active) < config.batch_size:
                ep = pending.pop()
                (done if ep.finish_reason else active).append(ep)
            if not active:
                continue
            outputs = engine.generate_turn(active)
            for ep, out in zip(active, outputs):
                engine.advance(ep, out)
            engine.encode_observations()
            for ep in active:
                if ep.finish_reason:  # free what only the next turn would need
                    ep.kv, ep.features = None, []
            done += [ep for ep in active if ep.finish_reason]
            active = [ep for ep in active if not ep.finish_reason]
            rounds += 1
            if progress:
                print(
                    f"rollout round {rounds}: {len(done)} done, {len(active)} active, {len(pending)} waiting "
                    f"({time.perf_counter() - started:.1f}s)",
                    file=sys.stderr,
                )
    done.sort(key=lambda ep: (ep.group, ep.member))
    return [ep.to_trajectory() for ep in done]


def collate(trajectories: Sequence[Trajectory], policy: Any) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a batch of ``B`` trajectories for a training forward.

    Returns a dict with:
        input_ids (B, T) long, padded with the policy's pad id;
        attention_mask (B, T) long, 1 on real tokens;
        loss_mask (B, T) bool, True on policy-generated tokens;
        segment_ids (B, T) long, assistant segment index, -1 outside the loss;
        old_logprobs (B, T) float32, sampling log-probs, 0 outside the loss;
        mm_token_type_ids (B, T) long, 1 on image placeholder tokens, 0 elsewhere;
        pixel_values (P, D) float and image_grid_thw (I, 3) long, every image of the
            batch in sequence order (trajectory by trajectory, each in its own order);
        group (B,) long, the GRPO group id of each trajectory;
        blocked_token_ids (V_b,) long, ids excluded from the sampling distribution
            (read by :func:`sequence_logprobs`).
    """
    if not trajectories or not all(isinstance(t, Trajectory) for t in trajectories):
        raise ValueError("collate needs a non-empty sequence of Trajectory")
    vocab = policy.tokenizer.get_vocab()
    image_pad_id = int(vocab[IMAGE_PAD])
    length = max(len(t.input_ids) for t in trajectories)
    B = len(trajectories)
    batch = {
        "input_ids": torch.full((B, length), int(policy.pad_token_id), dtype=torch.long),
        "attention_mask": torch.zeros((B, length), dtype=torch.long),
        "loss_mask": torch.zeros((B, length), dtype=torch.bool),
        "segment_ids": torch.full((B, length), -1, dtype=torch.long),
        "old_logprobs": torch.zeros((B, length), dtype=torch.float32),
    }
    for row, t in enumerate(trajectories):
        n = len(t.input_ids)
        batch["input_ids"][row, :n] = t.input_ids
        batch["attention_mask"][row, :n] = 1
        batch["loss_mask"][row, :n] = t.loss_mask
        batch["segment_ids"][row, :n] = t.segment_ids
        batch["old_logprobs"][row, :n] = t.logprobs
    batch["mm_token_type_ids"] = (batch["input_ids"] == image_pad_id).long() * batch["attention_mask"]
    batch["pixel_values"] = torch.cat([pv for t in trajectories for pv in t.pixel_values])
    batch["image_grid_thw"] = torch.cat([t.image_grid_thw for t in trajectories])
    batch["group"] = torch.tensor([t.group for t in trajectories], dtype=torch.long)
    batch["blocked_token_ids"] = torch.tensor(list(policy.vision_token_ids), dtype=torch.long)
    return batch


def sequence_logprobs(
    model: Any, batch: dict[str, torch.Tensor], *, temperature: float = 1.0, return_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``log p(token_t | tokens_<t)`` for every position of a collated batch, (B, T).

    One training-style forward (the model computes its own M-RoPE positions from
    ``mm_token_type_ids``), tempered by ``temperature`` with ``blocked_token_ids``
    removed from the distribution, as during sampling. Only positions where
    ``loss_mask`` is True are projected onto the vocabulary (memory: N x V, not
    B x T x V); all other positions, and t = 0, are 0. Differentiable when grad
    is enabled. With ``return_entropy`` it also returns the (B, T) entropy of the
    same tempered distribution at those positions (0 elsewhere), from the logits
    already computed (the trainer's entropy metric and bonus).
    """
    required = ("input_ids", "attention_mask", "loss_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; build it with mapo.rollout.collate")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    backend = backend_for(model)
    device = backend.device
    ids = batch["input_ids"].to(device)
    hidden = backend.hidden_states(batch)  # (B, T, H)
    targets = batch["loss_mask"].to(device).clone()
    targets[:, 0] = False  # nothing predicts the first token
    rows, cols = targets.nonzero(as_tuple=True)  # N positions whose token is scored
    logits = backend.lm_head(hidden[rows, cols - 1]).float() / temperature  # (N, V)
    blocked = batch.get("blocked_token_ids")
    if blocked is not None and blocked.numel():
        logits[:, blocked.to(device)] = float("-inf")
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


def finish_counts(trajectories: Sequence[Trajectory]) -> dict[str, int]:
    """How many trajectories ended for each reason (every reason listed, zeros included)."""
    counts = {reason: 0 for reason in FINISH_REASONS}
    for t in trajectories:
        counts[t.finish_reason] = counts.get(t.finish_reason, 0) + 1
    return counts


def rollout_stats(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Counts and rates for logging (formulas in docs/rollout.md)."""
    n = max(len(trajectories), 1)
    calls = sum(t.num_observations for t in trajectories)
    invalid = sum(not c.valid for t in trajectories for c in t.tool_calls)
    parse_errors = sum(len(turn.errors) > 0 for t in trajectories for turn in t.turns)
    turns = sum(len(t.turns) for t in trajectories)
    stats = {
        "trajectories": float(len(trajectories)),
        "generated_tokens": float(sum(t.num_generated for t in trajectories)),
        "turns_per_trajectory": turns / n,
        "tool_calls": float(calls),
        "invalid_tool_calls": float(invalid),
        "invalid_tool_call_rate": invalid / calls if calls else 0.0,
        "turns_with_format_errors": float(parse_errors),
        "tool_use_rate": sum(t.used_tool for t in trajectories) / n,
    }
    stats.update({f"finish/{k}": float(v) for k, v in finish_counts(trajectories).items()})
    return stats


__all__ = [
    "FINISH_REASONS",
    "RolloutConfig",
    "ToolCallRecord",
    "Trajectory",
    "collate",
    "finish_counts",
    "rollout",
    "rollout_stats",
    "sequence_logprobs",
]
