"""The tiny offline Qwen2.5-VL policy: builder, tokenizer, processor, save/load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mapo.agent import protocol
from mapo.policy import PRESETS, LoraOptions, build_tiny_policy, count_params, load_policy, missing_files
from mapo.policy.processor import check_no_resize
from mapo.policy.tiny import TinyPreset, model_config, resolve_preset
from mapo.policy.tokenizer import build_tokenizer
from mapo.agent.tools import ToolConfig, smart_resize

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_policy")
    policy.save(out)
    return out


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _conversation(policy):
    """System + user(image, question) + assistant tool call + observation(image)."""
    messages = protocol.initial_messages("What letter is on the red square?", ["A", "B", "C", "D"])
    messages.append(
        {"role": "assistant", "content": [{"type": "text", "text": protocol.render_assistant_turn(bbox=(0, 0, 56, 56), label="red square")}]}
    )
    messages.append(protocol.observation_message())
    text = policy.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, [_image(112, 112, 0), _image(224, 224, 1)]


# ----------------------------------------------------------------------------- presets


def test_preset_param_counts():
    """Sizes promised by the docs: tiny ~1 M, small ~5 M, base ~30 M (counted on the meta device)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = build_tokenizer(["a b c"] * 4, vocab_size=2048)
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(model_config(PRESETS[name], tok))
        # The real vocabulary is ~2k BPE + 1k numbers + tags: count embeddings at 3,100 rows.
        counts[name] = count_params(model) + (3100 - len(tok)) * PRESETS[name].text_hidden
    assert 0.6e6 < counts["tiny"] < 1.5e6, counts
    assert 3e6 < counts["small"] < 7e6, counts
    assert 20e6 < counts["base"] < 40e6, counts


def test_preset_rejects_bad_mrope_section():
    with pytest.raises(ValueError, match="mrope_section .* must sum to head_dim/2 = 12"):
        TinyPreset(96, 2, 4, 2, 256, (4, 4, 5), 64, 2, 2, 128)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        resolve_preset("huge")
    with pytest.raises(ValueError, match="unknown override"):
        resolve_preset("tiny", hidden=3)


def test_build_is_a_real_qwen2_5_vl(policy):
    from transformers import Qwen2_5_VLForConditionalGeneration

    assert isinstance(policy.model, Qwen2_5_VLForConditionalGeneration)
    cfg = policy.model.config
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    assert cfg.image_token_id == policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert 0.5e6 < count_params(policy.model) < 1.5e6


def test_seed_controls_weights():
    a = build_tiny_policy("tiny", corpus=["tiny corpus text"] * 3, seed=1, text_layers=1, vision_depth=1)
    b = build_tiny_policy("tiny", corpus=["tiny corpus text"] * 3, seed=1, text_layers=1, vision_depth=1)
    c = build_tiny_policy("tiny", corpus=["tiny corpus text"] * 3, seed=2, text_layers=1, vision_depth=1)
    wa, wb, wc = (p.model.lm_head.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# ----------------------------------------------------------------------------- tokenizer


def test_coordinates_are_single_tokens(policy):
    call = protocol.render_tool_call((12, 640, 1023, 1024), label="red square")
    ids = policy.tokenizer(call)["input_ids"]
    tokens = policy.tokenizer.convert_ids_to_tokens(ids)
    for number in ("12", "640", "1023", "1024"):
        assert number in tokens
    assert policy.tokenizer.decode(ids) == call
    # Beyond max_number: still tokenises and decodes exactly.
    assert policy.tokenizer.decode(policy.tokenizer("x 123456 y")["input_ids"]) == "x 123456 y"


def test_max_number_none_splits_digits():
    p = build_tiny_policy("tiny", corpus=["bbox 640 480"] * 4, max_number=None, text_layers=1, vision_depth=1)
    tokens = p.tokenizer.convert_ids_to_tokens(p.tokenizer("[640, 480]")["input_ids"])
    assert "640" not in tokens and "6" in tokens


def test_protocol_tags_and_specials_are_single_tokens(policy):
    tok = policy.tokenizer
    for t in ("<think>", "</answer>", "<description>", "<tool_call>", "</tool_response>", "<|im_start|>", "<|im_end|>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # Protocol tags survive skip_special_tokens; Qwen's control tokens do not.
    text = "<|im_start|>assistant\n<answer>B</answer><|im_end|>"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == "assistant\n<answer>B</answer>"


def test_chat_template_renders_qwen2_vl_format(policy):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>A</answer>"}]},
        {"role": "tool", "content": [{"type": "text", "text": "ok"}]},
    ]
    text = policy.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>A</answer><|im_end|>\n"
        "<|im_start|>tool\nok<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_vision_and_eos_ids(policy):
    tok = policy.tokenizer
    names = {tok.convert_ids_to_tokens(i) for i in policy.vision_token_ids}
    assert names == {"<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"}
    assert tok.convert_ids_to_tokens(policy.eos_token_ids) == ["<|im_end|>", "<|endoftext|>"]
    assert policy.model.generation_config.eos_token_id == policy.eos_token_ids


# ----------------------------------------------------------------------------- processor + model


def test_processor_expands_images_and_marks_mm_tokens(policy):
    text, images = _conversation(policy)
    inputs = policy.processor(text=[text], images=images, return_tensors="pt")
    grid = inputs["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8], [1, 16, 16]]  # 112/14, 224/14: the processor did not resize
    n_image_tokens = int((inputs["input_ids"] == policy.model.config.image_token_id).sum())
    assert n_image_tokens == int(grid.prod(-1).sum()) // 4  # 2x2 spatial merge
    assert torch.equal(inputs["mm_token_type_ids"][0] == 1, inputs["input_ids"][0] == policy.model.config.image_token_id)


def test_mm_token_type_ids_give_3d_positions(policy):
    """Without mm_token_type_ids transformers 5.x falls back to 1-D positions (docs/policy.md)."""
    text, images = _conversation(policy)
    inputs = policy.processor(text=[text], images=images, return_tensors="pt")
    rope = policy.model.model.get_rope_index
    pos, _ = rope(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )  # (3, B, T)
    image = inputs["input_ids"][0] == policy.model.config.image_token_id
    # Image tokens of an 8x8-patch (4x4 merged) view: 4 distinct heights and widths, one time.
    first = image.nonzero()[:16, 0]
    assert pos[1, 0, first].unique().numel() == 4 and pos[2, 0, first].unique().numel() == 4
    assert pos[0, 0, first].unique().numel() == 1


def test_forward_and_generate(policy):
    text, images = _conversation(policy)
    inputs = policy.processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        logits = policy.model(**inputs).logits
        out = policy.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(policy.tokenizer))
    assert torch.isfinite(logits).all()
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 4


def test_processor_does_not_resize_tool_views(policy):
    """Views the rollout smart-resizes with ToolConfig budgets reach the model at that size."""
    cfg = ToolConfig()
    for w, h in ((448, 448), (1344, 896), (300, 41)):
        for lo, hi in ((cfg.view_min_pixels, cfg.view_max_pixels), (cfg.obs_min_pixels, cfg.obs_max_pixels)):
            vh, vw = smart_resize(h, w, factor=cfg.factor, min_pixels=lo, max_pixels=hi)
            check_no_resize(policy.processor, vh, vw)
            grid = policy.processor.image_processor(images=[_image(vw, vh)], return_tensors="pt")["image_grid_thw"]
            assert grid.tolist() == [[1, vh // 14, vw // 14]]
    with pytest.raises(ValueError, match="outside the processor's pixel range"):
        check_no_resize(policy.processor, 28 * 40, 28 * 40)
    with pytest.raises(ValueError, match="not a multiple of 28"):
        check_no_resize(policy.processor, 100, 112)


def test_processor_refuses_videos(policy):
    with pytest.raises(ValueError, match="no video processor"):
        policy.processor(text=["x"], videos=[np.zeros((2, 28, 28, 3), dtype=np.uint8)])


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(policy, saved):
    names = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "chat_template.jinja"} <= names
    assert json.loads((saved / "processor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    loaded = load_policy(saved)
    text, images = _conversation(policy)
    a = policy.processor(text=[text], images=images, return_tensors="pt")
    b = loaded.processor(text=[text], images=images, return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(policy.model(**a).logits, loaded.model(**b).logits)
    assert loaded.path == str(saved)
    assert loaded.eos_token_ids == policy.eos_token_ids


def test_saved_tokenizer_loads_with_auto_tokenizer(policy, saved):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved, local_files_only=True)
    text, _ = _conversation(policy)
    assert tok(text)["input_ids"] == policy.tokenizer(text)["input_ids"]


def test_load_policy_dtype(saved):
    loaded = load_policy(saved, dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        load_policy(saved, dtype="int3")


@pytest.mark.parametrize(
    "remove, expected",
    [
        ("tokenizer.json", "tokenizer.json"),
        ("model.safetensors", "model.safetensors"),
        ("config.json", "config.json"),
        ("chat_template.jinja", "chat_template"),
    ],
)
def test_missing_files_are_named(saved, tmp_path, remove, expected):
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    (copy / remove).unlink()
    if remove == "chat_template.jinja":  # the template may also live in tokenizer_config.json
        cfg = json.loads((copy / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert any(expected in m for m in missing_files(copy))
    with pytest.raises(FileNotFoundError, match=f"missing: .*{expected}"):
        load_policy(copy)


def test_missing_shard_is_named(saved, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    (copy / "model.safetensors").rename(copy / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert missing_files(copy) == ["model-00002-of-00002.safetensors"]


def test_load_policy_rejects_non_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_policy(tmp_path / "Qwen/Qwen2.5-VL-7B-Instruct")


def test_lora_targets_language_model_only(saved, tmp_path):
    loaded = load_policy(saved, lora=LoraOptions(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    # An adapter directory loads back onto its base (B is zero at init: perturb it so it matters).
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    loaded.save(tmp_path / "adapter")
    again = load_policy(tmp_path / "adapter")
    base = load_policy(saved)
    text, images = _conversation(loaded)
    inputs = loaded.processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        tuned = loaded.model(**inputs).logits
        assert torch.allclose(tuned, again.model(**inputs).logits, atol=1e-5)
        assert not torch.allclose(tuned, base.model(**inputs).logits, atol=1e-3)
    with pytest.raises(ValueError, match="rank r must be positive"):
        LoraOptions(r=0)


def test_loads_qwen_release_layout(policy, saved, tmp_path):
    """Qwen2.5-VL releases ship preprocessor_config.json and chat_template.json, no processor_config.json."""
    copy = tmp_path / "release"
    shutil.copytree(saved, copy)
    template = (copy / "chat_template.jinja").read_text()
    (copy / "chat_template.jinja").unlink()
    (copy / "processor_config.json").unlink()
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    (copy / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_policy(copy)
    text, images = _conversation(policy)
    assert loaded.processor.apply_chat_template(
        protocol.initial_messages("Q?"), tokenize=False, add_generation_prompt=True
    ) == policy.processor.apply_chat_template(protocol.initial_messages("Q?"), tokenize=False, add_generation_prompt=True)
    a = loaded.processor(text=[text], images=images, return_tensors="pt")
    assert a["image_grid_thw"].tolist() == [[1, 8, 8], [1, 16, 16]]


# ----------------------------------------------------------------------------- the protocol record


def test_protocol_record_round_trips(policy, tmp_path):
    """A policy saved with its training protocol loads with it; one saved without loads with None."""
    import dataclasses

    from mapo.policy.load import PROTOCOL_FILE
    from mapo.agent.protocol import ProtocolConfig

    short = ProtocolConfig(system_template="You can zoom in on the image with $tool_name.")
    with_record = dataclasses.replace(policy, protocol=short)
    with_record.save(tmp_path / "a")
    assert (tmp_path / "a" / PROTOCOL_FILE).is_file()
    assert load_policy(tmp_path / "a").protocol == short
    policy.save(tmp_path / "b")  # the module's policy carries no record
    assert not (tmp_path / "b" / PROTOCOL_FILE).exists()
    assert load_policy(tmp_path / "b").protocol is None


@pytest.mark.parametrize("text", ["{not json", '{"protocol": {"no_such_field": 1}}', '{"protocol": {"think_tag": "a b"}}', "[]"])
def test_bad_protocol_record_is_named(saved, tmp_path, text):
    from mapo.policy.load import PROTOCOL_FILE

    copy = tmp_path / "p"
    shutil.copytree(saved, copy)
    (copy / PROTOCOL_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=PROTOCOL_FILE):
        load_policy(copy)


def test_untied_lm_head_round_trips(tmp_path):
    """tie_embeddings=False gives the LM head its own weights, kept through save/load."""
    untied = build_tiny_policy("tiny", seed=0, text_layers=1, vision_depth=1, tie_embeddings=False)
    head, embed = untied.model.lm_head.weight, untied.model.get_input_embeddings().weight
    assert head.data_ptr() != embed.data_ptr()
    untied.save(tmp_path / "u")
    loaded = load_policy(tmp_path / "u")
    assert loaded.model.lm_head.weight.data_ptr() != loaded.model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(loaded.model.lm_head.weight, head)
