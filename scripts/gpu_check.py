"""GPU check: speed and memory of mapo at the real shapes of Qwen2.5-VL-7B and Qwen3-VL-8B.

For each shape it builds the model at full depth with random weights in bfloat16
directly on the GPU (:func:`mapo.policy.real_shapes.model_config`, the tokenizer with
the real special-token ids and the published image processor), then

1. rollouts: batched multi-turn episodes (two scripted zooms teacher-forced through the
   decode loop, then a sampled turn) at each batch size; reports generated tokens per
   second and peak GPU memory;
2. one MAPO update step with LoRA (r=16 on the language model) and one full-parameter
   step (AdamW): forward + backward + optimizer step on 8 trajectories; reports time
   and peak memory;

and writes every number to a JSON file (``--out``). ``--dry-run`` runs the same code on
the CPU with 1 text layer, 1 vision block, widths of 64 (the real vocabulary) and
batch 2 (what ``tests/test_gpu_check.py`` runs); its numbers mean nothing.

Usage (see ``scripts/gpu_check.sh`` and ``docs/scale_out.md``):
    python scripts/gpu_check.py --out runs/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mapo.agent import protocol
from mapo.algo.advantage import AdvantageConfig, get_estimator
from mapo.data import synth
from mapo.algo.loss import LossConfig, policy_loss
from mapo.policy import LoraOptions, Policy, apply_lora
from mapo.policy.families import family_of
from mapo.policy.processor import build_processor
from mapo.policy.real_shapes import SHAPES, build_tokenizer_for, model_config
from mapo.engine.rollout import RolloutConfig, collate, rollout, sequence_logprobs
from mapo.agent.tools import ToolConfig

ZOOM_1 = protocol.render_assistant_turn(think="look at the top left", bbox=(8, 8, 120, 120), label="top left")
ZOOM_2 = protocol.render_assistant_turn(description="a grey area", bbox=(60, 60, 200, 200), label="the centre")
GROUP = 8  # trajectories per prompt (G)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu_check.json", help="JSON file of results")
    p.add_argument("--shapes", default="qwen2_5_vl_7b,qwen3_vl_8b", help=f"comma-separated, from {sorted(SHAPES)}")
    p.add_argument("--batches", default="8,32,64", help="rollout batch sizes (episodes generated together)")
    p.add_argument("--side", type=int, default=448, help="view and observation side in pixels (square budgets)")
    p.add_argument("--sampled-tokens", type=int, default=128,
                   help="tokens per turn: the limit of the sampled turn after the two scripted zooms")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="CPU, 1 layer, 1 block, width 64, batch 2: checks the script runs")
    return p.parse_args(argv)


def _narrow(config) -> None:
    """Dry run only: widths of 64 (the vocabulary stays real) so a CPU can hold the update step."""
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads = 64, 128, 4, 2
    text.head_dim = 16
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    vision.hidden_size, vision.intermediate_size, vision.num_heads, vision.out_hidden_size = 64, 128, 2, 64


def build_policy(shape: str, device: torch.device, dtype: torch.dtype, *, layers: int | None, blocks: int | None,
                 side: int, narrow: bool = False) -> Policy:
    """The real-shape model with random weights built on ``device``, its tokenizer and processor
    (``narrow``: widths of 64 for the dry run)."""
    spec = SHAPES[shape]
    tokenizer = build_tokenizer_for(shape, [protocol.system_prompt(), ZOOM_1, ZOOM_2] * 4)
    tokenizer.chat_template = spec.chat_template
    pre = spec.preprocessor
    processor = build_processor(
        tokenizer, model_type=spec.model_type, min_pixels=min(pre["min_pixels"], side * side),
        max_pixels=pre["max_pixels"], patch_size=pre["patch_size"], merge_size=pre["merge_size"],
        image_mean=pre["image_mean"], image_std=pre["image_std"],
    )
    config = model_config(shape, text_layers=layers, vision_depth=blocks)
    if narrow:
        _narrow(config)
    cls = family_of(spec.model_type).model_cls()
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return Policy(model=model.eval(), processor=processor, tokenizer=tokenizer)


def _forced(group: int, member: int, turn: int) -> str | None:
    return (ZOOM_1, ZOOM_2)[turn] if turn < 2 else None


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def rollout_speed(policy: Policy, batch: int, side: int, sampled: int, device: torch.device) -> tuple[dict, list]:
    """Generated tokens/s and peak memory of ``batch`` episodes played together."""
    tool = ToolConfig(view_min_pixels=side * side, view_max_pixels=side * side,
                      obs_min_pixels=side * side, obs_max_pixels=side * side)
    prompts = max(1, batch // GROUP)
    config = RolloutConfig(group_size=min(GROUP, batch), max_turns=3, max_new_tokens_per_turn=sampled,
                           max_total_tokens=8192, batch_size=batch, tool=tool)
    samples = synth.generate(prompts, seed=0, config="easy")
    _peak_reset(device)
    start = time.perf_counter()
    trajectories = rollout(samples, policy, config, forced_turns=_forced)
    seconds = time.perf_counter() - start
    generated = sum(t.num_generated for t in trajectories)
    return {
        "batch": batch, "episodes": len(trajectories), "generated_tokens": generated, "seconds": round(seconds, 3),
        "tokens_per_s": round(generated / seconds, 1), "peak_gib": _peak_gib(device),
        "tokens_per_episode": round(sum(len(t.input_ids) for t in trajectories) / len(trajectories), 1),
        "zooms_per_episode": sum(t.num_observations for t in trajectories) / len(trajectories),
    }, trajectories


def update_step(policy: Policy, trajectories: list, device: torch.device, *, lora: bool) -> dict:
    """One MAPO update (forward, backward, AdamW step) on ``trajectories``; time and peak memory."""
    if lora:
        policy = apply_lora(policy, LoraOptions(r=16, alpha=32, dropout=0.0))
    else:
        policy.model.requires_grad_(True)  # a LoRA step before left the base weights frozen
    model = policy.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    batch = collate(trajectories, policy)
    B = len(trajectories)
    outcome = torch.arange(B, dtype=torch.float32) % 2  # half right, half wrong: non-zero advantages
    semantic = torch.linspace(-1, 1, B * 2).view(B, 2)  # one score per zoom
    advantages = get_estimator("mapo")(outcome, batch.group, batch.segment_ids, semantic,
                                       config=AdvantageConfig(estimator="mapo"))
    _peak_reset(device)
    start = time.perf_counter()
    logp = sequence_logprobs(model, batch).float()
    loss, _ = policy_loss(logp, batch.old_logprobs.to(device), advantages.to(device),
                          batch.loss_mask.to(device), config=LossConfig())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    out = {"kind": "lora" if lora else "full", "trajectories": B, "trainable_params": sum(p.numel() for p in params),
           "seconds": round(seconds, 3), "peak_gib": _peak_gib(device), "loss_finite": bool(torch.isfinite(loss))}
    del optimizer
    if lora:  # back to the plain model (peft wrapped it in place) for the next step
        policy.model.unload()
    model.eval()
    model.requires_grad_(False)
    return out


def run(args: argparse.Namespace) -> dict:
    if args.dry_run:
        # 64 tokens a turn: the scripted zooms (~40 tokens) must fit, or no zoom happens.
        device, dtype, layers, blocks, batches, side, sampled = torch.device("cpu"), torch.float32, 1, 1, [2], 224, 64
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on a CPU)")
        device, dtype, layers, blocks = torch.device(args.device), torch.bfloat16, None, None
        batches, side, sampled = [int(b) for b in args.batches.split(",")], args.side, args.sampled_tokens
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "dry_run": args.dry_run, "side": side, "sampled_tokens": sampled, "shapes": {},
    }
    for shape in args.shapes.split(","):
        started = time.perf_counter()
        policy = build_policy(shape, device, dtype, layers=layers, blocks=blocks, side=side, narrow=args.dry_run)
        entry = {"params": sum(p.numel() for p in policy.model.parameters()),
                 "build_seconds": round(time.perf_counter() - started, 1), "rollout": [], "update": []}
        trajectories = []
        for batch in batches:
            row, played = rollout_speed(policy, batch, side, sampled, device)
            entry["rollout"].append(row)
            trajectories = trajectories or played[: min(8, len(played))]
            print(f"{shape} rollout batch {batch}: {row['tokens_per_s']} tok/s, peak {row['peak_gib']} GiB", flush=True)
        for lora in (True, False):
            row = update_step(policy, trajectories, device, lora=lora)
            entry["update"].append(row)
            print(f"{shape} update ({row['kind']}): {row['seconds']} s, peak {row['peak_gib']} GiB", flush=True)
        results["shapes"][shape] = entry
        del policy
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
