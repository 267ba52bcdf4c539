"""Qwen2.5-VL-7B and Qwen3-VL-8B at their real widths (2 text layers, 2 vision blocks), on CPU.

Each test writes a random-weight checkpoint in the release layout
(:func:`mapo.policy.real_shapes.write_release_dir`: sharded bf16 safetensors with
index, ``preprocessor_config.json``, chat template, special tokens at their real
ids), evaluates it with ``mapo eval --model DIR`` (float32) while the rollout plays
one scripted episode with two zooms and an answer, then checks, on that episode:

- the rollout's recorded log-probs (KV cache across turns, cached vision features,
  deepstack features for Qwen3-VL) equal one full Hugging Face forward over the
  whole sequence within 1e-4;
- the token ids, ``mm_token_type_ids``, ``pixel_values`` and ``image_grid_thw`` the
  rollout built turn by turn equal what the processor makes of the whole conversation
  in one call. (``Qwen2_5_VLProcessor``/``Qwen3VLProcessor`` themselves cannot be built
  without torchvision; the image-only processors run their ``__call__`` unchanged.)

Slow: each writes and reads ~3.3 GB of weights and runs a 1.6 B-parameter forward on
one thread (about a minute each on 2 cores); ``make test-slow`` runs them.
"""

from __future__ import annotations

import json

import pytest
import torch

import mapo.engine.rollout
from mapo.agent import protocol

pytestmark = pytest.mark.slow

ZOOM_1 = protocol.render_assistant_turn(think="look at the top left", bbox=(8, 8, 72, 72), label="the top left")
ZOOM_2 = protocol.render_assistant_turn(description="a grey area", bbox=(40, 40, 104, 104), label="the centre")
ANSWER = protocol.render_assistant_turn(description="a red square", answer="A")


def _forced(group: int, member: int, turn: int) -> str | None:
    return (ZOOM_1, ZOOM_2, ANSWER)[turn] if turn < 3 else None


def _corpus() -> list[str]:
    return [protocol.system_prompt(), ZOOM_1, ZOOM_2, ANSWER] * 3


def _full_forward_logprobs(policy, t, inputs) -> torch.Tensor:
    """Log-probs of the generated tokens of trajectory ``t`` from one full HF forward (no cache)."""
    model = policy.model
    positions = t.loss_mask.nonzero().squeeze(1)  # tokens to score; each is predicted at position - 1
    with torch.no_grad():
        logits = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            logits_to_keep=positions - 1,
        ).logits[0].float()  # (N, V)
    logits[:, policy.vision_token_ids] = float("-inf")  # the rollout never samples vision tokens
    return torch.log_softmax(logits, dim=-1).gather(1, t.input_ids[positions][:, None]).squeeze(1)


def _conversation_text(policy, t) -> str:
    """The whole episode as text, each image's run of placeholders collapsed to one (what the template renders)."""
    pad = "<|image_pad|>"
    text = policy.tokenizer.decode(t.input_ids, skip_special_tokens=False)
    while pad + pad in text:
        text = text.replace(pad + pad, pad)
    return text


@pytest.mark.parametrize(
    "shape, side, hidden, image_tokens",
    [
        ("qwen2_5_vl_7b", 112, 3584, 16),  # 112 px / 28 px per token side = 4 x 4 tokens
        ("qwen3_vl_8b", 256, 4096, 64),  # Qwen3-VL's min_pixels is 256 x 256; 256 / 32 = 8 x 8 tokens
    ],
)
def test_real_shape_eval_episode_matches_one_hf_forward(tmp_path, monkeypatch, shape, side, hidden, image_tokens):
    from mapo.cli import main
    from mapo.policy.real_shapes import write_release_dir

    torch.set_num_threads(1)
    ckpt = write_release_dir(shape, tmp_path / shape, text_layers=2, vision_depth=2, corpus=_corpus())
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2  # sharded, as released

    played = {}
    real_rollout = mapo.engine.rollout.rollout

    def scripted(samples, policy, config, **kwargs):
        kwargs["forced_turns"] = _forced
        played["policy"], played["trajectories"] = policy, real_rollout(samples, policy, config, **kwargs)
        return played["trajectories"]

    monkeypatch.setattr(mapo.engine.rollout, "rollout", scripted)
    budget = side * side
    code = main([
        "eval", "--data", "synth:1", "--model", str(ckpt), "--out", str(tmp_path / "eval"), "--dtype", "float32",
        "--no-progress", "tool_from_data=false", "rollout.max_turns=3", "rollout.max_new_tokens_per_turn=80",
        f"rollout.tool.view_min_pixels={budget}", f"rollout.tool.view_max_pixels={budget}",
        f"rollout.tool.obs_min_pixels={budget}", f"rollout.tool.obs_max_pixels={budget}",
    ])
    assert code == 0
    # The sample was played, not skipped (a wrong patch factor in eval's preparation skips it).
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["broken_rows"] == 0 and metrics["skipped_rows"] == [], metrics["skipped_rows"]
    policy, (t,) = played["policy"], played["trajectories"]

    # The checkpoint is what it claims: real widths, real special-token ids.
    assert policy.model.config.text_config.hidden_size == hidden
    vocab = policy.tokenizer.get_vocab()
    assert (vocab["<|endoftext|>"], vocab["<|im_end|>"], vocab["<|image_pad|>"]) == (151643, 151645, 151655)
    assert policy.model.config.image_token_id == 151655

    # Two zooms, then the answer; each image is `image_tokens` placeholders.
    assert t.finish_reason == "answer" and len(t.tool_calls) == 2 and all(c.valid for c in t.tool_calls)
    assert t.view_size == (side, side)
    assert (t.image_grid_thw.prod(-1) // 4).tolist() == [image_tokens] * 3

    # The processor on the whole conversation gives the rollout's ids, token types and pixels.
    inputs = policy.processor(text=[_conversation_text(policy, t)], images=t.images, return_tensors="pt")
    assert torch.equal(inputs["input_ids"][0], t.input_ids)
    batch = mapo.engine.rollout.collate([t], policy)
    assert torch.equal(inputs["mm_token_type_ids"], batch.mm_token_type_ids)
    assert torch.equal(inputs["image_grid_thw"], t.image_grid_thw)
    assert torch.equal(inputs["pixel_values"], torch.cat(t.pixel_values))

    # The rollout's log-probs (KV cache, cached vision features) equal one full forward.
    full = _full_forward_logprobs(policy, t, inputs)
    recorded = t.logprobs[t.loss_mask]
    gap = (full - recorded).abs().max().item()
    print(f"{shape}: max |rollout - full forward| log-prob gap {gap:.2e} over {len(recorded)} tokens")
    assert gap <= 1e-4
