"""The rollout engine: a batched multi-turn agent loop with the zoom-in tool.

:func:`rollout` plays ``G`` episodes per sample. Each round it takes up to
``batch_size`` unfinished episodes, generates one assistant turn for all of them
at once (:class:`mapo.engine.generate.TurnGenerator`: one prefill, then a KV-cached decode
loop), hands each turn to the episode's rules (:class:`mapo.agent.episode.Episode`: parse,
finish reasons, the tool call, the observation) and appends the observation (crop
image + text) **as token ids** (:class:`mapo.policy.encoding.ChatEncoder`). The result
is one :class:`mapo.engine.trajectory.Trajectory` per episode; :func:`mapo.engine.trajectory.collate`
pads them for a training forward and :func:`mapo.engine.trajectory.sequence_logprobs` is that
forward.

Model-specific work (vision features, M-RoPE positions, the KV cache, the prefill,
decode and training forwards) goes through the policy's backend
(:func:`mapo.policy.backend.backend_for`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL); this module
holds none. The zoom tool's view is smart-resized with the backend's patch x merge
factor (28 or 32 px), which replaces ``config.tool.factor``.

Token exactness. Generated ids are kept as ids; text is decoded only to be
parsed. The per-token sampling log-probs are ``log_softmax(logits / temperature)``
over the vocabulary with the vision special tokens removed (they can never be
sampled), which is exactly what :func:`mapo.engine.trajectory.sequence_logprobs` computes,
so old/new importance ratios are exact (``tests/test_rollout.py`` checks agreement
within 1e-4).

Choices and departures (nothing here is specified by the MAPO paper):

- ``top_p < 1`` and ``greedy`` change how tokens are *chosen*, but the recorded
  log-prob is still the full tempered distribution (top-p-free), so with them
  the recorded log-probs are not those of the behaviour policy.
- The budget is checked *before* an observation is appended (docs/rollout.md); an
  observation that does not fit ends the episode with ``max_tokens`` or
  ``max_images`` instead of being truncated.
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
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from mapo.core.config import knob
from mapo.agent.episode import FINISH_REASONS
from mapo.engine.generate import TokenEpisode, TurnGenerator, TurnOutput
from mapo.policy.backend import backend_for
from mapo.policy.encoding import ChatEncoder
from mapo.agent.protocol import ProtocolConfig
from mapo.agent.tools import ToolConfig, view_size, with_factor
# Re-exported: the names the rollout's users have always imported from here.
from mapo.engine.trajectory import TrainBatch, Trajectory, collate, sequence_logprobs


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
            raise ValueError(f"tool must be a mapo.agent.tools.ToolConfig, got {type(self.tool).__name__}")
        if not isinstance(self.protocol, ProtocolConfig):
            raise ValueError(f"protocol must be a mapo.agent.protocol.ProtocolConfig, got {type(self.protocol).__name__}")


@contextmanager
def _eval_mode(model: Any):
    """Sample with dropout off (the recorded log-probs must be deterministic), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _Player:
    """Starts episodes, generates their turns, and turns each turn's outcome into tokens."""

    def __init__(
        self, policy: Any, config: RolloutConfig, generator: torch.Generator | Callable[[int, int], torch.Generator],
        forced: Callable | None,
    ) -> None:
        self.config = config
        self.backend = backend_for(policy.model)
        # The view<->original mapping uses the policy's own patch x merge factor (28 or 32 px).
        self.tool = with_factor(config.tool, self.backend.factor)
        self.enc = ChatEncoder(policy, config.protocol)
        # A torch.Generator is not callable: a callable is the per-episode factory (group, member) -> generator.
        self.episode_generator = generator if callable(generator) else None
        self.turns = TurnGenerator(
            self.backend, self.enc, policy.pad_token_id,
            sampling={"temperature": config.temperature, "greedy": config.greedy, "top_p": config.top_p},
            max_new_tokens=config.max_new_tokens_per_turn, max_total_tokens=config.max_total_tokens,
            generator=None if callable(generator) else generator, forced=forced,
        )
        self.unencoded: list[tuple[TokenEpisode, int]] = []  # crops awaiting encode_observations: (episode, image index)

    def start(self, sample: Any, group: int) -> list[TokenEpisode]:
        """The ``G`` episodes of one sample, sharing the prompt (computed once)."""
        cfg = self.config
        image = sample.load_image()
        view_wh = view_size(image.size, self.tool)
        view = image if image.size == view_wh else image.resize(view_wh, Image.Resampling.BICUBIC)
        pixel_values, grid = self.enc.process_image(view, is_view=True)
        ids = self.enc.prompt_ids(sample, grid)
        feature = self.backend.encode_images(pixel_values, grid[None])[0]
        episodes = []
        for member in range(cfg.group_size):
            ep = TokenEpisode(
                sample, group, member, view=view, pixel_values=pixel_values, grid=grid, feature=feature,
                image=image, view_wh=view_wh, protocol=cfg.protocol, tool=self.tool, max_images=cfg.max_images,
                max_turns=cfg.max_turns,
            )
            if self.episode_generator is not None:
                ep.generator = self.episode_generator(group, member)
            ep.append(ids)
            if len(ids) + 1 > cfg.max_total_tokens:
                ep.finish("prompt_too_long")
            episodes.append(ep)
        return episodes

    def advance(self, ep: TokenEpisode, out: TurnOutput) -> None:
        """Append a generated turn, apply the episode's rules, and append the observation if it fits."""
        ep.append(out.ids, segment=len(ep.turns), logps=out.logps)
        text = self.enc.decode(out.ids[:-1] if out.ended else out.ids)
        ep.texts.append(text)
        cut = None if out.ended else ("max_tokens" if len(ep.ids) >= self.config.max_total_tokens else "max_new_tokens")
        observation = ep.assistant_turn(text, cut=cut)
        if observation is None:
            return
        pixel_values = grid = None
        if observation.crop is not None:
            pixel_values, grid = self.enc.process_image(observation.crop, is_view=False)
        obs_ids = self.enc.close_turn_ids(out.ids) + self.enc.observation_ids(observation.message, grid)
        if len(ep.ids) + len(obs_ids) + 1 > self.config.max_total_tokens:
            ep.finish("max_tokens")
            return
        ep.append(obs_ids)
        ep.add_observation(observation)
        if observation.crop is not None:
            ep.images.append(observation.crop)
            ep.pixel_values.append(pixel_values)
            ep.grids.append(grid)
            ep.features.append(None)  # filled by encode_observations before the next turn
            self.unencoded.append((ep, len(ep.features) - 1))

    def encode_observations(self) -> None:
        """Vision features of every crop observed this round, in one vision-tower call.

        ``advance`` queues its crop instead of encoding it: one call for the whole batch costs
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
        generator = torch.Generator(device=next(policy.model.parameters()).device).manual_seed(config.seed)
    engine = _Player(policy, config, generator, forced_turns)
    done: list[TokenEpisode] = []
    with _eval_mode(policy.model), torch.no_grad():
        pending = [ep for group, sample in enumerate(samples) for ep in engine.start(sample, group)]
        pending.reverse()  # pop() from the end keeps sample order
        active: list[TokenEpisode] = []
        rounds, started = 0, time.perf_counter()
        while pending or active:
            while pending and len(active) < config.batch_size:
                ep = pending.pop()
                (done if ep.finish_reason else active).append(ep)
            if not active:
                continue
            outputs = engine.turns.generate_turn(active)
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
        "invalid_call_rate": invalid / calls if calls else 0.0,
        "turns_with_format_errors": float(parse_errors),
        "tool_use_rate": sum(t.used_tool for t in trajectories) / n,
    }
    stats.update({f"finish/{k}": float(v) for k, v in finish_counts(trajectories).items()})
    return stats


__all__ = [
    "FINISH_REASONS",
    "RolloutConfig",
    "TrainBatch",
    "Trajectory",
    "collate",
    "finish_counts",
    "rollout",
    "rollout_stats",
    "sequence_logprobs",
]
