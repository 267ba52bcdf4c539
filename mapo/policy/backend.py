"""Model backends: the model-specific half of generation and of the training forward.

:mod:`mapo.engine.rollout` plays episodes (prompting, parsing, the tool, budgets, sampling)
and knows nothing about a model family; everything that does lives here, behind one
interface (:class:`QwenVLBackend`):

- ``encode_images``: vision features of a batch of images, one :class:`VisionFeatures`
  per image, computed once and cached by the rollout across turns;
- ``positions``: the model's own position ids of a token history (Qwen's 3-D M-RoPE);
- ``prefill`` / ``decode``: one forward over new tokens with a KV cache, returning the
  next-token logits; ``batch_cache`` / ``episode_cache`` / ``select_rows`` move the KV
  cache between one batched cache and per-episode storage;
- ``hidden_states``: one training-style forward over a collated batch (the log-prob
  forward of :func:`mapo.engine.rollout.sequence_logprobs`); ``mm_token_type_ids`` the
  image-token mask it needs.

Two backends:

- :class:`QwenVLBackend`: Qwen2-VL and Qwen2.5-VL (patch 14 x merge 2 = 28 px per
  image token side).
- :class:`Qwen3VLBackend`: Qwen3-VL (patch 16 x merge 2 = 32). Its vision tower also
  returns *deepstack* features (hidden states of intermediate vision blocks) that the
  language model adds to the image positions of its first layers; the vision-feature
  cache carries them with the main features, so a cached image is fed exactly as a
  fresh one.

:func:`backend_for` picks the backend class that the model family registry
(:mod:`mapo.policy.families`) names for ``model.config.model_type`` and refuses other
types with the list of supported ones. The patch factor (``factor``) comes from the
model's vision config; the tool's view<->original mapping uses it
(:func:`mapo.agent.tools.with_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mapo.policy.families import SUPPORTED_MODEL_TYPES, family_of, unsupported_message


@dataclass
class VisionFeatures:
    """What the language model reads for one image.

    ``embeds`` (n, H): one row per image token (merged patch). ``deepstack`` is one
    (n, H) tensor per deepstack layer (Qwen3-VL), empty for models without them.
    """

    embeds: torch.Tensor
    deepstack: tuple[torch.Tensor, ...] = ()


@dataclass
class _EncoderOutput:
    """The shape Qwen's forward reads from ``mm_encoder_outputs["image"]``.

    ``pooler_output``: per-image (n_i, H) features in token order;
    ``deepstack_features``: per deepstack layer, per-image (n_i, H) (Qwen3-VL only).
    """

    pooler_output: tuple[torch.Tensor, ...]
    deepstack_features: list[tuple[torch.Tensor, ...]] = field(default_factory=list)


# A per-episode KV cache: per layer (keys, values), each (kv_heads, C, head_dim) for C cached tokens.
EpisodeKV = list[tuple[torch.Tensor, torch.Tensor]]


def _unwrap(model: Any) -> Any:
    """The ``...ForConditionalGeneration`` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type_of(model: Any) -> str | None:
    return getattr(getattr(_unwrap(model), "config", None), "model_type", None)


def backend_for(model: Any) -> QwenVLBackend:
    """The backend of ``model`` (a Qwen-VL ``...ForConditionalGeneration``, possibly peft-wrapped).

    Raises:
        ValueError: the model type is not supported (the message lists those that are).
    """
    family = family_of(model_type_of(model), f"policy.model ({type(model).__name__})")
    return family.backend_cls()(model)


def _left_pad(t: torch.Tensor | None, length: int, like: torch.Tensor) -> torch.Tensor:
    """``t`` (heads, C, d) padded with zeros on the left of dim 1 to ``length`` (None: all zeros)."""
    heads, _, dim = like.shape
    out = like.new_zeros((heads, length, dim))
    if t is not None and t.shape[1]:
        out[:, length - t.shape[1]:] = t
    return out


class QwenVLBackend:
    """Qwen2-VL / Qwen2.5-VL behind the backend interface (HF transformers 5.x)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        base = _unwrap(model)
        core = getattr(base, "model", None)
        if core is None or not hasattr(core, "get_rope_index") or not hasattr(base, "lm_head"):
            raise ValueError(
                f"policy.model must be a Qwen-VL ForConditionalGeneration model "
                f"(with .model.get_rope_index and .lm_head), got {type(model).__name__}"
            )
        self.core = core
        self.lm_head = base.lm_head
        vision = base.config.vision_config
        self.patch_size = int(vision.patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.image_token_id = int(base.config.image_token_id)

    @property
    def factor(self) -> int:
        """Pixels per image-token side: ``patch_size * merge_size`` (28 for Qwen2.5-VL, 32 for Qwen3-VL)."""
        return self.patch_size * self.merge_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- vision ------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor, grids: torch.Tensor) -> list[VisionFeatures]:
        """Features of ``n`` images in one vision-tower call.

        Args:
            pixel_values: (sum of patches, C*t*p*p), the images' patches in order.
            grids: (n, 3) long, each image's (t, h, w) patch grid.

        The tower attends within each image, so one call for many images gives the
        features of separate calls.
        """
        out = self.core.get_image_features(pixel_values.to(self.device), grids.to(self.device), return_dict=True)
        return [VisionFeatures(f) for f in out.pooler_output]

    def encoder_outputs(self, features: list[VisionFeatures]) -> dict[str, Any] | None:
        """``mm_encoder_outputs`` for a forward whose new tokens hold these images, in token order."""
        if not features:
            return None
        return {"image": _EncoderOutput(tuple(f.embeds for f in features))}

    # --- positions ---------------------------------------------------------------

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 on image placeholder tokens, 0 elsewhere (same shape as ``input_ids``)."""
        return (input_ids == self.image_token_id).long()

    def positions(self, ids: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """(3, L) M-RoPE position ids of one unpadded history ``ids`` (L,) with images ``grids`` (I, 3),
        exactly as the model's own forward computes them (``get_rope_index``)."""
        pos, _ = self.core.get_rope_index(ids[None], self.mm_token_type_ids(ids)[None], grids)  # (3, 1, L)
        return pos[:, 0]

    # --- KV cache ----------------------------------------------------------------

    def batch_cache(self, stored: list[EpisodeKV | None], length: int) -> Any:
        """One ``DynamicCache`` of ``B`` rows from per-episode caches, each left-padded to ``length``.

        ``None`` rows (nothing cached yet) are all padding; the attention mask hides padding.
        Returns ``None`` when ``length`` is 0.
        """
        if length == 0:
            return None
        from transformers import DynamicCache

        cache = DynamicCache()
        ref = next(kv for kv in stored if kv is not None)  # shapes of a stored cache
        for layer, (ref_k, ref_v) in enumerate(ref):
            rows = [kv[layer] if kv is not None else (None, None) for kv in stored]
            keys = torch.stack([_left_pad(k, length, like=ref_k) for k, _ in rows])  # (B, heads, length, d)
            values = torch.stack([_left_pad(v, length, like=ref_v) for _, v in rows])
            cache.update(keys.to(self.device), values.to(self.device), layer)
        return cache

    @staticmethod
    def episode_cache(cache: Any, row: int, keep: torch.Tensor) -> EpisodeKV:
        """Row ``row`` of a batched cache at the positions ``keep`` (L,) bool marks real, as per-episode storage."""
        keep = keep.bool()
        return [(layer.keys[row][:, keep], layer.values[row][:, keep]) for layer in cache.layers]

    @staticmethod
    def select_rows(cache: Any, index: torch.Tensor) -> None:
        """Keep (and repeat) the cache rows ``index`` (b,), in place."""
        cache.batch_select_indices(index)

    @staticmethod
    def cached_length(kv: EpisodeKV | None) -> int:
        return 0 if kv is None else int(kv[0][0].shape[1])

    # --- forwards ----------------------------------------------------------------

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        features: list[VisionFeatures],
        cache: Any,
    ) -> tuple[torch.Tensor, Any]:
        """Feed new tokens after a (possibly empty) cache; return the last position's logits and the cache.

        Args:
            input_ids: (B, N) new tokens, left-padded.
            attention_mask: (B, P + N) 1 on real cached and new tokens.
            position_ids: (3, B, N) positions of the new tokens.
            features: vision features of the images among the new tokens, row by row in token order.
            cache: a cache of P tokens per row (``batch_cache``) or None.

        Returns:
            logits (B, V) at the last new position, and the cache extended by N tokens.
        """
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            mm_encoder_outputs=self.encoder_outputs(features),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], out.past_key_values

    def decode(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """One text token per row: ``tokens`` (b,), ``attention_mask`` (b, L+1), ``position_ids`` (3, b, 1).
        Returns the next logits (b, V); the cache grows by one token in place."""
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1]

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states (B, T, H) of a collated batch, one training-style forward.

        The model computes its own M-RoPE positions from ``mm_token_type_ids`` (transformers
        5.x silently falls back to 1-D positions without it; docs/policy.md).
        """
        device = self.device
        return self.core(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            mm_token_type_ids=batch["mm_token_type_ids"].to(device),
            pixel_values=batch["pixel_values"].to(device),
            image_grid_thw=batch["image_grid_thw"].to(device),
            use_cache=False,
        ).last_hidden_state


class Qwen3VLBackend(QwenVLBackend):
    """Qwen3-VL: as Qwen2.5-VL, plus deepstack features carried with each image's features."""

    def encode_images(self, pixel_values: torch.Tensor, grids: torch.Tensor) -> list[VisionFeatures]:
        out = self.core.get_image_features(pixel_values.to(self.device), grids.to(self.device), return_dict=True)
        per_layer = out.deepstack_features or []  # [layer][image] -> (n_i, H)
        return [
            VisionFeatures(embeds, tuple(layer[i] for layer in per_layer))
            for i, embeds in enumerate(out.pooler_output)
        ]

    def encoder_outputs(self, features: list[VisionFeatures]) -> dict[str, Any] | None:
        if not features:
            return None
        layers = len(features[0].deepstack)
        if any(len(f.deepstack) != layers for f in features):
            raise ValueError("vision features disagree on the number of deepstack layers")
        deepstack = [tuple(f.deepstack[layer] for f in features) for layer in range(layers)]
        return {"image": _EncoderOutput(tuple(f.embeds for f in features), deepstack)}


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "EpisodeKV",
    "Qwen3VLBackend",
    "QwenVLBackend",
    "VisionFeatures",
    "backend_for",
    "unsupported_message",
]
