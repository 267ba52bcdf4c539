"""Training memory of Qwen2.5-VL-3B / 7B at full depth, measured at real widths on a CPU with few layers.

For each shape (:mod:`mapo.policy.real_shapes`, random weights, no download):

- **parameters**: counted on the full-depth model built on the meta device (no memory);
  LoRA adapters counted on the meta model wrapped by peft (r = 16 on q/k/v/o/gate/up/down of
  the language model, mapo's default targets);
- **weights, gradients, optimizer**: bytes per parameter of each recipe (full: float32
  weights, float32 gradients, AdamW's two float32 moments; LoRA: a bfloat16 base, float32
  adapters with their gradients and moments);
- **activations per turn**: the bytes autograd saves for the backward pass during mapo's
  training forward (:func:`mapo.engine.trajectory.sequence_logprobs`: core model, then the output
  layer on the scored positions only) of one sequence holding one image and one assistant
  turn, measured with ``torch.autograd.graph.saved_tensors_hooks`` (unique storages, weights
  excluded) at 1 and 2 text layers and 1 and 2 vision blocks, bfloat16 weights; the
  difference is the cost of one layer / block, extrapolated to the published depth. With
  gradient checkpointing (``finetune.gradient_checkpointing``) each layer and block keeps
  only its input (computed: tokens x width x 2 bytes) plus one layer's and one block's
  measured activations while they are recomputed;
- **KV cache**: bytes per token measured on a bfloat16 prefill's ``DynamicCache`` (1 layer),
  times the published layer count.

Usage (about 3 minutes and 8 GB of RAM on 2 cores)::

    python scripts/memory_table.py --out runs/memory_table.json   # prints the markdown table

The table in docs/training.md ("Memory at 3B and 7B") is this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mapo.policy.families import family_of
from mapo.policy.real_shapes import SHAPES, model_config

GiB = 2**30
LORA_R = 16


def parameter_counts(name: str) -> dict[str, int]:
    """Full-depth counts on the meta device: total, vision tower, per text layer, LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    from mapo.train.finetune import LORA_TARGETS

    config = model_config(name)
    with torch.device("meta"):
        model = family_of(config.model_type).model_cls()(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once (parameters() dedupes)
    vision = sum(p.numel() for p in model.model.visual.parameters())
    layer = sum(p.numel() for p in model.model.language_model.layers[0].parameters())
    lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules=rf".*language_model.*\.({'|'.join(LORA_TARGETS)})")
    peft_model = get_peft_model(model, lora)
    adapters = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    return {"total": total, "vision": vision, "text_layer": layer, "lora": adapters}


def _inputs(config, image_side: int, text_tokens: int, turn_tokens: int):
    """One sequence: ``text_tokens`` of prompt, one ``image_side`` x ``image_side`` image, ``turn_tokens`` scored."""
    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    grid = image_side // v.patch_size
    image_tokens = (image_side // factor) ** 2
    ids = torch.full((1, text_tokens + image_tokens + turn_tokens), 100, dtype=torch.long)
    ids[0, text_tokens:text_tokens + image_tokens] = config.image_token_id
    patches = grid * grid
    pixel_values = torch.randn(patches, v.in_chans if hasattr(v, "in_chans") else 3, v.temporal_patch_size,
                               v.patch_size, v.patch_size).reshape(patches, -1)
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == config.image_token_id).long(),
        "pixel_values": pixel_values.to(torch.bfloat16), "image_grid_thw": torch.tensor([[1, grid, grid]]),
    }, image_tokens, turn_tokens


def saved_bytes(model, inputs: dict, scored: int) -> int:
    """Bytes of the distinct tensors autograd saves in mapo's training forward (weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in weights:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.model(**inputs, use_cache=False).last_hidden_state  # (1, T, H)
        logits = model.lm_head(hidden[0, -scored - 1:-1]).float()  # (N, V): the scored positions only
        torch.log_softmax(logits, dim=-1).sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def kv_bytes_per_token_layer(model, inputs: dict) -> float:
    """Bytes of a bfloat16 prefill's KV cache per token and layer."""
    with torch.no_grad():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    tokens = inputs["input_ids"].shape[1]
    total = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                for layer in cache.layers)
    return total / tokens / len(cache.layers)


def measure(name: str, image_side: int, text_tokens: int, turn_tokens: int) -> dict:
    shape = SHAPES[name]
    counts = parameter_counts(name)
    depth, blocks = shape.text["num_hidden_layers"], shape.vision["depth"]
    act: dict[tuple[int, int], int] = {}
    kv = None
    for layers, vision in ((1, 1), (2, 1), (1, 2)):
        config = model_config(name, text_layers=layers, vision_depth=vision)
        torch.manual_seed(0)
        model = family_of(config.model_type).model_cls()._from_config(config, dtype=torch.bfloat16)  # random init
        inputs, image_tokens, scored = _inputs(config, image_side, text_tokens, turn_tokens)
        act[layers, vision] = saved_bytes(model, inputs, scored)
        if kv is None:
            kv = kv_bytes_per_token_layer(model, inputs)
        del model
    seq = text_tokens + image_tokens + turn_tokens
    per_layer, per_block = act[2, 1] - act[1, 1], act[1, 2] - act[1, 1]
    rest = act[1, 1] - per_layer - per_block
    hidden, patches = shape.text["hidden_size"], inputs["pixel_values"].shape[0]
    # Checkpointing keeps each layer's (block's) input, (T, H) bfloat16, and one layer's activations at a time
    # (recomputed in the backward pass); what is outside the layers is unchanged.
    layer_input, block_input = seq * hidden * 2, patches * shape.vision["hidden_size"] * 2
    return {
        "shape": name, "counts": counts, "depth": depth, "vision_depth": blocks, "tokens": seq,
        "image_tokens": image_tokens, "scored_tokens": turn_tokens, "image_side": image_side,
        "kv_bytes_per_token_layer": kv, "measured": {f"{k[0]}L{k[1]}V": v for k, v in act.items()},
        "per_text_layer": per_layer, "per_vision_block": per_block, "rest": rest,
        "full_depth": rest + depth * per_layer + blocks * per_block,
        "checkpointed": rest + depth * layer_input + per_layer + blocks * block_input + per_block,
    }


def table(results: list[dict]) -> str:
    rows = ["| model | params (B) | LoRA r=16 (M) | full: weights + grads + AdamW (GiB) | LoRA: bf16 base + adapters, "
            "grads, AdamW (GiB) | activations per turn (GiB) | with checkpointing (GiB) | KV cache per 1k tokens (GiB) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["counts"]
        full = 16 * c["total"] / GiB  # float32 weights 4 + gradients 4 + AdamW moments 8
        lora = (2 * c["total"] + 16 * c["lora"]) / GiB
        kv = r["kv_bytes_per_token_layer"] * r["depth"] * 1000 / GiB
        rows.append(
            f"| {r['shape']} | {c['total'] / 1e9:.2f} | {c['lora'] / 1e6:.1f} | {full:.1f} | {lora:.1f} | "
            f"{r['full_depth'] / GiB:.2f} | {r['checkpointed'] / GiB:.2f} | {kv:.3f} |"
        )
    r0 = results[0]
    rows.append("")
    rows.append(f"Activations: one sequence of {r0['tokens']} tokens ({r0['image_tokens']} image tokens from a "
                f"{r0['image_side']} px image, {r0['scored_tokens']} scored assistant tokens), bfloat16.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="qwen2_5_vl_3b,qwen2_5_vl_7b")
    p.add_argument("--image-side", type=int, default=896, help="pixels per side of the turn's image")
    p.add_argument("--text-tokens", type=int, default=256, help="prompt tokens besides the image")
    p.add_argument("--turn-tokens", type=int, default=256, help="scored assistant tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/memory_table.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.shapes.split(","):
        started = time.perf_counter()
        results.append(measure(name, args.image_side, args.text_tokens, args.turn_tokens))
        print(f"{name}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
