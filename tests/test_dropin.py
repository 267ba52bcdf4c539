"""A saved policy is a drop-in transformers checkpoint: ``AutoModelForImageTextToText`` + its own chat template
(mapo's system prompt inside) + plain ``generate`` produce, token for token, the greedy turn of mapo's rollout.

No torchvision here, so ``AutoProcessor`` cannot be built (Qwen's processor wants a video processor); the
plain path below does what it does for one image: the chat template renders the text, the image processor
makes the patches, and each ``<|image_pad|>`` becomes one token per merged patch.
"""

from __future__ import annotations

import torch
from PIL import Image


def _plain_inputs(root, question_text: str, view: Image.Image):
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(root)
    images = Qwen2VLImageProcessorPil.from_pretrained(root)(images=[view], return_tensors="pt")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question_text}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # no system message
    merge = AutoConfig.from_pretrained(root).vision_config.spatial_merge_size
    n = int(images["image_grid_thw"][0].prod()) // merge**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return text, {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == image_id).long(),
        "pixel_values": images["pixel_values"], "image_grid_thw": images["image_grid_thw"],
    }


def test_plain_transformers_generation_equals_the_rollout_turn_for_turn(tmp_path):
    from transformers import AutoModelForImageTextToText

    from mapo.agent import tools
    from mapo.data import synth
    from mapo.data.task import tool_config_for
    from mapo.policy import load_default
    from mapo.agent.protocol import system_prompt, user_prompt
    from mapo.engine.rollout import RolloutConfig, rollout

    policy = load_default()  # the shipped warm start: it zooms on its first turn
    root = tmp_path / "policy"
    policy.save(root)
    (sample,) = synth.generate(1, seed=5, config=synth.level_config("pattern"))
    tool = tool_config_for(sample)
    cfg = RolloutConfig(group_size=1, greedy=True, max_turns=1, max_new_tokens_per_turn=96, tool=tool,
                        protocol=policy.protocol)
    (traj,) = rollout([sample], policy, cfg)
    turn = traj.input_ids[traj.loss_mask]  # the first (only) assistant turn, its <|im_end|> included
    assert "<tool_call>" in policy.tokenizer.decode(turn)  # the warm start zooms: the protocol, not a direct answer

    image = sample.load_image()
    view = image.resize(tools.view_size(image.size, tool), Image.Resampling.BICUBIC)  # what the rollout shows
    question = user_prompt(sample.question, sample.options, policy.protocol)
    text, inputs = _plain_inputs(root, question, view)
    assert system_prompt(policy.protocol) in text  # the checkpoint's own template carries the system prompt
    model = AutoModelForImageTextToText.from_pretrained(root).eval()
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=96)
    plain = out[0, inputs["input_ids"].shape[1]:]
    assert plain.tolist() == turn.tolist()
    # mapo's own prompt (system message given) is the same token sequence as the template's default
    assert torch.equal(inputs["input_ids"][0], traj.input_ids[: inputs["input_ids"].shape[1]])


def test_the_system_prompt_is_added_once_and_an_explicit_one_wins(tmp_path):
    from mapo.policy import load_policy
    from mapo.policy.load import SYSTEM_MARK
    from mapo.agent.protocol import ProtocolConfig

    from mapo.policy import load_default

    shipped = load_default()
    shipped.protocol = ProtocolConfig(system_template="Zoom with $tool_name, then answer.")
    shipped.save(tmp_path / "a")
    again = load_policy(tmp_path / "a")
    again.save(tmp_path / "b")  # saving a saved policy does not stack preambles
    template = (tmp_path / "b" / "chat_template.jinja").read_text()
    assert template.count(SYSTEM_MARK) == 1 and template.count("Zoom with image_zoom_in_tool") == 1
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = again.tokenizer.apply_chat_template(own, tokenize=False)
    assert "Be brief." in text and "Zoom with" not in text
