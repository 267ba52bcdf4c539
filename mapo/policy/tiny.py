"""A tiny, randomly initialised, *real* Qwen2.5-VL (or Qwen3-VL) built offline.

:func:`build_tiny_policy` returns a ``transformers.Qwen2_5_VLForConditionalGeneration``
(``arch="qwen3_vl"``: ``Qwen3VLForConditionalGeneration``) with random weights sized
by a preset, a Qwen2 BPE tokenizer trained on the task's own text
(:mod:`mapo.policy.tokenizer`) and a processor without a video processor
(:mod:`mapo.policy.processor`). Because the architecture, tokenizer class and file
layout are Qwen's, every code path that serves the tiny model (rollout, SFT, RL,
saving, loading) also serves a real checkpoint of the same family.

Guesses and departures (none of this is from the MAPO paper, which trains
Qwen2.5-VL-7B):

- Preset sizes are ours: ``tiny`` 0.8 M, ``small`` 4.6 M, ``base`` 29 M
  parameters with the default tokenizer (``python -m mapo.policy.tiny`` prints them).
- Word embeddings are tied to the LM head (as in Qwen2.5-VL-3B) to keep the
  small models' parameters out of the vocabulary.
- ``rope_theta`` is 10,000 rather than Qwen's 1,000,000: sequences here are a
  few hundred tokens.
- The vision window (``window_size`` = 112 px) covers a whole small view, and
  the last vision block uses full attention.
- Qwen3-VL (``arch="qwen3_vl"``) keeps the preset's sizes; its own parts are set as
  in Qwen3-VL: patch 16 (32 px per image token side), image mean/std 0.5, interleaved
  M-RoPE, learned vision position embeddings (a 16 x 16 grid here, 48 x 48 in
  Qwen3-VL), and deepstack features from vision blocks ``0 .. min(3, depth) - 1``
  (Qwen3-VL-8B: blocks 8, 16, 24 of 27) added to the first language-model layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import torch

from mapo.policy.families import TINY_ARCHS, family_of
from mapo.policy.load import Policy
from mapo.policy.processor import build_processor
from mapo.policy.tokenizer import build_tokenizer

@dataclasses.dataclass(frozen=True)
class TinyPreset:
    """Sizes of one preset. ``mrope_section`` must sum to ``text_hidden / text_heads / 2``."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    mrope_section: tuple[int, int, int]
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    vocab_size: int = 2048  # trained BPE part, before special/number/tag tokens
    tie_embeddings: bool = True  # LM head = input embeddings (as in Qwen2.5-VL-3B); False: a separate head

    def __post_init__(self) -> None:
        head_dim, rem = divmod(self.text_hidden, self.text_heads)
        if rem:
            raise ValueError(f"text_hidden={self.text_hidden} must be divisible by text_heads={self.text_heads}")
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must sum to head_dim/2 = {head_dim // 2} "
                f"(head_dim = text_hidden / text_heads = {head_dim})"
            )
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads={self.text_heads} must be a multiple of text_kv_heads={self.text_kv_heads}")
        if self.vision_hidden % self.vision_heads:
            raise ValueError(f"vision_hidden={self.vision_hidden} must be divisible by vision_heads={self.vision_heads}")


# Architectures the tiny builder makes (config.json model_type): the registered families with a
# ``tiny_config`` (mapo.policy.families); sizes come from the preset.
ARCHS = TINY_ARCHS

PRESETS: dict[str, TinyPreset] = {
    "tiny": TinyPreset(96, 4, 4, 2, 256, (4, 4, 4), 64, 2, 2, 128),
    "small": TinyPreset(192, 8, 6, 2, 512, (4, 6, 6), 128, 4, 4, 256),
    "base": TinyPreset(384, 10, 6, 2, 1536, (8, 12, 12), 256, 6, 4, 768),
}


def resolve_preset(preset: str, **overrides) -> TinyPreset:
    """The named preset with field ``overrides`` applied (unknown names raise ``ValueError``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TinyPreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for build_tiny_policy; valid: {sorted(fields)}")
    if "mrope_section" in overrides:
        overrides["mrope_section"] = tuple(overrides["mrope_section"])
    return dataclasses.replace(PRESETS[preset], **overrides)


def model_config(p: TinyPreset, tokenizer, arch: str = "qwen2_5_vl"):
    """The HF config of family ``arch`` (its registry ``tiny_config``) for preset ``p`` with the
    special-token ids of ``tokenizer``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {list(ARCHS)}")
    return family_of(arch).tiny_config_fn()(p, tokenizer)


def qwen2_5_vl_config(p: TinyPreset, tokenizer):
    """``Qwen2_5_VLConfig`` of preset ``p``: patch 14, a 112-px vision window, the last block full attention."""
    from transformers import Qwen2_5_VLConfig

    text = _text_config(p, tokenizer, rope={})
    vision = _vision_config(
        p, patch_size=14, window_size=112, fullatt_block_indexes=[p.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_token_ids(p, tokenizer))


def qwen3_vl_config(p: TinyPreset, tokenizer):
    """``Qwen3VLConfig`` of preset ``p``: patch 16, learned vision positions, deepstack blocks."""
    from transformers import Qwen3VLConfig

    # Qwen3 sets head_dim explicitly (default 128) and interleaves the M-RoPE sections.
    text = _text_config(p, tokenizer, rope={"mrope_interleaved": True}, head_dim=p.text_hidden // p.text_heads)
    vision = _vision_config(
        p, patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=list(range(min(3, p.vision_depth))),
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_token_ids(p, tokenizer))


def _text_config(p: TinyPreset, tokenizer, *, rope: dict, **extra) -> dict:
    """The text-model fields both Qwen generations share, plus ``extra`` and ``rope`` parameters."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=p.text_hidden,
        intermediate_size=p.text_intermediate,
        num_hidden_layers=p.text_layers,
        num_attention_heads=p.text_heads,
        num_key_value_heads=p.text_kv_heads,
        **extra,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "mrope_section": list(p.mrope_section), **rope, "rope_theta": 10000.0},
        tie_word_embeddings=p.tie_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _vision_config(p: TinyPreset, **extra) -> dict:
    """The vision-tower fields both Qwen generations share, plus ``extra`` (patch size and its own knobs)."""
    return dict(
        depth=p.vision_depth,
        hidden_size=p.vision_hidden,
        intermediate_size=p.vision_intermediate,
        num_heads=p.vision_heads,
        out_hidden_size=p.text_hidden,
        spatial_merge_size=2,
        temporal_patch_size=2,
        **extra,
    )


def _token_ids(p: TinyPreset, tokenizer) -> dict:
    """The multimodal special-token ids of ``tokenizer`` and the tied-embeddings flag, as both configs take them."""
    return dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=p.tie_embeddings,
    )


def pixel_range(tool_config=None, factor: int = 28) -> tuple[int, int]:
    """(min_pixels, max_pixels) of the processor: the span of the tool's view and observation
    budgets, so that images the rollout has already smart-resized pass through unchanged.

    ``factor`` is the policy's patch x merge: a square budget's side that is not a multiple
    of it (112 px for a 32-px Qwen3-VL) is smart-resized below the budget (96 px), and the
    range reaches down to that area too.
    """
    from mapo.agent.tools import ToolConfig, smart_resize

    cfg = ToolConfig() if tool_config is None else tool_config
    lo, hi = min(cfg.view_min_pixels, cfg.obs_min_pixels), max(cfg.view_max_pixels, cfg.obs_max_pixels)
    for low, high in ((cfg.view_min_pixels, cfg.view_max_pixels), (cfg.obs_min_pixels, cfg.obs_max_pixels)):
        side = max(1, math.isqrt(low))
        h, w = smart_resize(side, side, factor, low, high)
        lo = min(lo, h * w)
    return lo, hi


def build_tiny_policy(
    preset: str = "tiny",
    *,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    max_number: int | None = 1024,
    tool_config=None,
    arch: str = "qwen2_5_vl",
    **overrides,
) -> Policy:
    """Build a randomly initialised Qwen2.5-VL (or Qwen3-VL) policy with a locally trained tokenizer.

    Args:
        preset: ``tiny`` (~1 M params), ``small`` (~5 M) or ``base`` (~30 M).
        corpus: texts to train the BPE on; default :func:`mapo.policy.tokenizer.default_corpus`.
        seed: seeds the weight initialisation (the tokenizer is deterministic given the corpus).
        max_number: integers ``0..max_number`` are single tokens (``None``: digit by digit).
        tool_config: ``mapo.agent.tools.ToolConfig`` whose pixel budgets the processor must not
            alter (default ``ToolConfig()``).
        arch: ``qwen2_5_vl`` (default) or ``qwen3_vl``: a registered family with a tiny
            builder (:data:`ARCHS`, :mod:`mapo.policy.families`).
        **overrides: fields of :class:`TinyPreset` (e.g. ``text_layers=2``, ``vocab_size=1024``).
    """
    from transformers import GenerationConfig

    from mapo.policy.tokenizer import default_corpus, protocol_tags

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {list(ARCHS)}")
    p = resolve_preset(preset, **overrides)
    texts = list(default_corpus() if corpus is None else corpus)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("corpus must be a non-empty iterable of strings")
    tokenizer = build_tokenizer(texts, vocab_size=p.vocab_size, max_number=max_number, extra_tokens=protocol_tags())
    family = family_of(arch)
    config = model_config(p, tokenizer, arch)
    # The processor's patch and merge sizes follow the model's vision config (check_matches_model).
    patch, merge = int(config.vision_config.patch_size), int(config.vision_config.spatial_merge_size)
    min_pixels, max_pixels = pixel_range(tool_config, factor=patch * merge)
    norm = {} if family.image_norm is None else dict(zip(("image_mean", "image_std"), family.image_norm))
    processor = build_processor(
        tokenizer, model_type=arch, min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=merge,
        **norm,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.model_cls()(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        bos_token_id=config.text_config.bos_token_id,
        do_sample=False,
    )
    model.eval()
    return Policy(model=model, processor=processor, tokenizer=tokenizer, path=None)


def count_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def preset_table() -> list[tuple[str, int, int, int]]:
    """(preset, total params, vision params, vocab size) with the default tokenizer; meta device, no memory."""
    from mapo.policy.tokenizer import default_corpus, protocol_tags

    tokenizer = build_tokenizer(default_corpus(), extra_tokens=protocol_tags())
    model_cls = family_of("qwen2_5_vl").model_cls()
    rows = []
    for name, p in PRESETS.items():
        with torch.device("meta"):
            model = model_cls(model_config(p, tokenizer))
        rows.append((name, count_params(model), count_params(model.model.visual), len(tokenizer)))
    return rows


if __name__ == "__main__":  # python -m mapo.policy.tiny: the preset table of docs/policy.md
    for name, total, vision, vocab in preset_table():
        print(f"{name:<6} {total:>11,d} params ({vision:,d} vision)  vocab {vocab}")
