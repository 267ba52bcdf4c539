"""Random-weight checkpoints with the real shapes of Qwen2.5-VL-3B/7B and Qwen3-VL-8B, in the release layout.

:func:`write_release_dir` writes a directory that looks like the published
checkpoint to every loader: ``config.json`` with the published config values,
sharded ``model-0000N-of-0000M.safetensors`` with ``model.safetensors.index.json``
(bfloat16, as released), ``preprocessor_config.json`` with the published image
processor values, a tokenizer whose special tokens sit at their real ids
(``<|endoftext|>`` = 151643 … ``<|image_pad|>`` = 151655 …), a chat template and
``generation_config.json``. Only the weights are random and the vocabulary's
ordinary part is a small BPE padded with unreachable fillers to 151,643 entries.

What it is for: checking mapo's code paths (loading, processor, positions, KV cache,
deepstack, log-probs) at the real widths on a CPU with few layers
(``text_layers=2, vision_depth=2``: ``tests/test_real_shapes.py``), and measuring
speed and memory at full depth on a GPU (``scripts/gpu_check.py``). Nothing here
is downloaded; the config values are transcribed from the public ``config.json`` and
``preprocessor_config.json`` of ``Qwen/Qwen2.5-VL-3B-Instruct``, ``Qwen/Qwen2.5-VL-7B-Instruct`` and
``Qwen/Qwen3-VL-8B-Instruct``.

Departures, all stated: with fewer vision blocks, the blocks that use full attention
(Qwen2.5-VL) and the deepstack blocks (Qwen3-VL) are mapped proportionally
(``i * depth // real_depth``), so a 2-block tower keeps both kinds; the chat template
is mapo's Qwen2-VL template (Qwen3-VL: without the default system prompt), not the
published Jinja file; the protocol tags Qwen lacks (``<answer>``, ``<description>``, …)
are added after Qwen's own tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from mapo.policy.families import family_of
from mapo.policy.tokenizer import QWEN2_VL_CHAT_TEMPLATE

QWEN_BASE_VOCAB = 151643  # id of <|endoftext|>: the ordinary tokens come before it
# Qwen's added tokens after <tool_call></tool_call>, in id order (151659 …).
QWEN25_TAIL = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
QWEN3_TAIL = QWEN25_TAIL + ("<tool_response>", "</tool_response>", "<think>", "</think>")  # 151665 … 151668

# The Qwen2-VL template without its default system prompt (Qwen3-VL adds none).
QWEN3_VL_CHAT_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}",
    "",
)


@dataclasses.dataclass(frozen=True)
class RealShape:
    """The published configuration of one checkpoint (``config.json`` sub-dicts and the image processor)."""

    model_type: str
    text: dict[str, Any]
    vision: dict[str, Any]
    preprocessor: dict[str, Any]
    added_tokens: tuple[str, ...]
    chat_template: str
    full_depth_keys: tuple[str, ...]  # vision-config lists of block indices, remapped for fewer blocks


SHAPES: dict[str, RealShape] = {
    "qwen2_5_vl_3b": RealShape(
        model_type="qwen2_5_vl",
        text=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
            sliding_window=32768, max_window_layers=70, hidden_act="silu", tie_word_embeddings=True,
            bos_token_id=151643, eos_token_id=151645,
        ),
        vision=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
            hidden_act="silu", tokens_per_second=2, in_chans=3,
        ),
        preprocessor=dict(
            min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
            image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        added_tokens=QWEN25_TAIL,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        full_depth_keys=("fullatt_block_indexes",),
    ),
    "qwen2_5_vl_7b": RealShape(
        model_type="qwen2_5_vl",
        text=dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
            sliding_window=32768, max_window_layers=28, hidden_act="silu", tie_word_embeddings=False,
            bos_token_id=151643, eos_token_id=151645,
        ),
        vision=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
            hidden_act="silu", tokens_per_second=2, in_chans=3,
        ),
        preprocessor=dict(
            min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
            image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        added_tokens=QWEN25_TAIL,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        full_depth_keys=("fullatt_block_indexes",),
    ),
    "qwen3_vl_8b": RealShape(
        model_type="qwen3_vl",
        text=dict(
            vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
            rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True, "rope_theta": 5000000.0
            },
            bos_token_id=151643, eos_token_id=151645,
        ),
        vision=dict(
            depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh", in_channels=3,
        ),
        preprocessor=dict(
            min_pixels=65536, max_pixels=16777216, patch_size=16, temporal_patch_size=2, merge_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        ),
        added_tokens=QWEN3_TAIL,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
        full_depth_keys=("deepstack_visual_indexes",),
    ),
}


def _remap_blocks(indexes: list[int], depth: int, real_depth: int) -> list[int]:
    """Block indices of a ``real_depth`` tower mapped onto ``depth`` blocks, proportionally, deduplicated."""
    return sorted({i * depth // real_depth for i in indexes})


def model_config(name: str, *, text_layers: int | None = None, vision_depth: int | None = None):
    """The HF config of shape ``name`` (``SHAPES``), optionally with fewer text layers / vision blocks."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
    shape = SHAPES[name]
    text, vision = dict(shape.text), dict(shape.vision)
    if text_layers is not None:
        text["num_hidden_layers"] = text_layers
        if "max_window_layers" in text:  # Qwen2.5-VL's text config has it; it must not exceed the layers
            text["max_window_layers"] = text_layers
    if vision_depth is not None:
        for key in shape.full_depth_keys:
            vision[key] = _remap_blocks(vision[key], vision_depth, vision["depth"])
        vision["depth"] = vision_depth
    return family_of(shape.model_type).config_cls()(
        text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),  # the 3B shares embedding and lm_head
    )


def build_tokenizer_for(name: str, corpus: list[str]):
    """A tokenizer with the special tokens of shape ``name`` at their real ids (digits split, as Qwen's)."""
    from mapo.policy.tokenizer import build_tokenizer, protocol_tags

    shape = SHAPES[name]
    return build_tokenizer(
        corpus, vocab_size=1024, max_number=None, extra_tokens=[*shape.added_tokens, *protocol_tags()],
        base_vocab_size=QWEN_BASE_VOCAB,
    )


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Norm weights 1, biases 0, everything else N(0, 0.02) (HF's initialiser range)."""
    if len(shape) == 1 and "norm" in name and name.endswith("weight"):
        return torch.ones(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    return torch.empty(shape).normal_(0.0, 0.02, generator=generator)


def write_weights(config, out: Path, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                  shard_bytes: int = 2 << 30) -> int:
    """Random weights for ``config`` as sharded safetensors plus ``model.safetensors.index.json``.

    The parameter names and shapes come from the model built on the meta device (no
    memory); tensors are drawn one at a time and a shard is written when it reaches
    ``shard_bytes``, so memory stays near one shard. Returns the number of parameters.
    """
    cls = family_of(config.model_type).model_cls()
    with torch.device("meta"):
        skeleton = cls(config)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()  # stored once, as released
    names = [(n, p.shape) for n, p in skeleton.state_dict().items() if n not in tied]
    generator = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    files: list[tuple[str, dict[str, None]]] = []  # (temporary file name, names of its tensors)
    weight_map: dict[str, str] = {}
    for name, shape in names:
        tensor = _random_tensor(name, shape, generator).to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            files.append(_flush(shards[-1], out, len(files)))
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
        total += tensor.numel()
    files.append(_flush(shards[-1], out, len(files)))
    count = len(files)
    for i, (tmp_name, tensors) in enumerate(files):
        final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        (out / tmp_name).rename(out / final)
        weight_map.update({n: final for n in tensors})
    index = {"metadata": {"total_size": total * torch.tensor([], dtype=dtype).element_size()}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return total


def _flush(tensors: dict[str, torch.Tensor], out: Path, i: int) -> tuple[str, dict[str, torch.Tensor]]:
    from safetensors.torch import save_file

    name = f"shard-{i}.tmp"
    save_file(tensors, str(out / name), metadata={"format": "pt"})
    names = {n: None for n in tensors}  # keep only the names: the tensors are freed
    tensors.clear()
    return name, names


def write_release_dir(
    name: str,
    out: str | Path,
    *,
    text_layers: int | None = None,
    vision_depth: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    corpus: list[str] | None = None,
    shard_bytes: int = 2 << 30,
) -> Path:
    """Write a random-weight checkpoint of shape ``name`` in the release layout; return its path.

    Args:
        name: ``qwen2_5_vl_3b``, ``qwen2_5_vl_7b`` or ``qwen3_vl_8b`` (:data:`SHAPES`).
        out: directory to create (must not hold a checkpoint already).
        text_layers, vision_depth: fewer layers/blocks than published (None: full depth).
        seed: seed of the weights.
        dtype: dtype of the stored weights (bfloat16, as released).
        corpus: texts for the tokenizer's small BPE (default: mapo's default corpus).
        shard_bytes: largest shard size.
    """
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from mapo.policy.tokenizer import default_corpus

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if (root / "config.json").exists():
        raise ValueError(f"{root} already holds a checkpoint; choose an empty directory")
    shape = SHAPES.get(name)
    if shape is None:
        raise ValueError(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
    config = model_config(name, text_layers=text_layers, vision_depth=vision_depth)
    config.dtype = dtype
    tokenizer = build_tokenizer_for(name, list(default_corpus() if corpus is None else corpus))
    tokenizer.chat_template = shape.chat_template
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {config.text_config.vocab_size}")
    write_weights(config, root, seed=seed, dtype=dtype, shard_bytes=shard_bytes)
    config.save_pretrained(root)
    tokenizer.save_pretrained(root)
    (root / "chat_template.jinja").write_text(shape.chat_template, encoding="utf-8")
    Qwen2VLImageProcessorPil(**shape.preprocessor).save_pretrained(root)
    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(root)
    return root


__all__ = ["SHAPES", "RealShape", "build_tokenizer_for", "model_config", "write_release_dir", "write_weights"]
