"""The verifier interface and the clip backend, on tiny randomly initialised CLIP/SigLIP directories."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mapo.verifier import ScoreResult, load_verifier, prepare_image
from mapo.verifier.base import MAX_ASPECT, MAX_SIDE_FACTOR, MIN_SIDE
from mapo.verifier.inspect import auroc
from mapo.verifier.pairs import CropPair
from mapo.verifier.tiny_clip import BOS, EOS, PAD, build_image_processor, build_tokenizer
from mapo.verifier.train import CropTensor, VerifierTrainConfig, contrastive_loss

CAPTIONS = ["a red circle with the letter A", "a blue square with the letter B", "empty background"]
TINY = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=1, text_width=32, text_layers=1, heads=2,
            projection_dim=16, max_text_tokens=12)


@pytest.fixture(scope="module")
def clip_dir(tiny_clip, tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), CAPTIONS, **TINY)


@pytest.fixture(scope="module")
def verifier(clip_dir):
    return load_verifier(clip_dir)


def _rgb(color=(200, 30, 30), size=(40, 40)):
    return Image.new("RGB", size, color)


def test_score_is_cosine_of_the_embeddings(verifier):
    texts = ["a red circle with the letter A", "a blue square"]
    images = [_rgb(), _rgb((30, 30, 200), (50, 30))]
    scores = verifier.score(texts, images)
    expected = (verifier.embed_text(texts) * verifier.embed_images(images)).sum(-1)
    assert scores.shape == (2,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    emb = verifier.embed_text(texts)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert emb.shape == (2, verifier.dim)


def test_batch_size_does_not_change_scores(verifier):
    texts = [CAPTIONS[i % 3] for i in range(7)]
    images = [_rgb((i * 30, 100, 200 - i * 20)) for i in range(7)]
    torch.testing.assert_close(verifier.score(texts, images, batch_size=2), verifier.score(texts, images), atol=1e-5, rtol=0)


def test_empty_long_and_non_ascii_descriptions(verifier):
    long_text = "a red circle " * 200
    result = verifier.score_detailed(["", "   \n", long_text, "ein rötlicher Kreis 🔴", "a red circle"], [_rgb()] * 5)
    assert isinstance(result, ScoreResult)
    assert result.scores[:2].tolist() == [verifier.s_missing] * 2 == [-1.0, -1.0]
    assert result.missing.tolist() == [True, True, False, False, False]
    assert result.truncated.tolist() == [False, False, True, False, False]
    assert torch.isfinite(result.scores).all() and (result.scores.abs() <= 1 + 1e-5).all()
    # Truncation keeps the head: a long text scores like its first max_text_tokens tokens.
    head = " ".join(long_text.split()[: verifier.max_text_tokens - 2])
    torch.testing.assert_close(verifier.score([long_text], [_rgb()]), verifier.score([head], [_rgb()]), atol=1e-5, rtol=0)


def test_a_megabyte_description_is_cut_before_tokenizing(verifier):
    result = verifier.score_detailed(["x" * 1_000_000], [_rgb()])
    assert result.truncated.tolist() == [True] and torch.isfinite(result.scores).all()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (40, 40), 128),
        Image.new("1", (40, 40), 1),
        Image.new("RGBA", (40, 40), (255, 0, 0, 128)),
        Image.new("LA", (40, 40), (20, 0)),
        Image.new("P", (40, 40), 3),
        Image.new("CMYK", (40, 40), (0, 255, 255, 0)),
        Image.new("I;16", (40, 40), 40000),
        Image.new("I", (40, 40), 70000),
        Image.new("F", (40, 40), 0.5),
        Image.new("RGB", (1, 1), (255, 0, 0)),
        Image.new("RGB", (3, 1), (255, 0, 0)),
        Image.new("RGB", (1, 5000), (255, 0, 0)),
        Image.new("RGB", (6000, 5000), (255, 0, 0)),
    ],
    ids=lambda im: f"{im.mode}-{im.width}x{im.height}",
)
def test_any_image_mode_and_size_gets_a_finite_score(verifier, image):
    s = verifier.score(["a red circle"], [image])
    assert s.shape == (1,) and torch.isfinite(s).all()
    prepared = prepare_image(image, verifier.image_side)
    assert prepared.mode == "RGB"
    assert MIN_SIDE <= min(prepared.size) and max(prepared.size) <= MAX_SIDE_FACTOR * verifier.image_side
    assert max(prepared.size) / min(prepared.size) <= MAX_ASPECT + 1e-6


def test_transparent_pixels_become_white_and_16_bit_is_scaled():
    rgb = prepare_image(Image.new("RGBA", (20, 20), (255, 0, 0, 0)), 32)
    assert rgb.getpixel((5, 5)) == (255, 255, 255)
    half = prepare_image(Image.new("RGBA", (20, 20), (255, 0, 0, 128)), 32).getpixel((5, 5))
    assert half[0] == 255 and 120 <= half[1] <= 135  # 50% red over white = (255, 127, 127)
    wide = prepare_image(Image.new("I;16", (20, 20), 65535), 32)
    assert wide.getpixel((0, 0)) == (255, 255, 255)


def test_image_cache_hits_and_matches_uncached(clip_dir):
    cached = load_verifier(clip_dir, cache_images=True)
    plain = load_verifier(clip_dir, cache_images=False)
    images = [_rgb((10, 200, 10)), _rgb((10, 200, 10)), _rgb((200, 10, 10))]  # two identical contents
    first = cached.embed_images(images)
    assert cached.cache.misses == 3 and cached.cache.hits == 0 and len(cached.cache) == 2
    again = cached.embed_images(images[:1])
    assert cached.cache.hits == 1
    torch.testing.assert_close(first, plain.embed_images(images), atol=1e-6, rtol=0)
    torch.testing.assert_close(again[0], first[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda v: v.score(["a"], [_rgb(), _rgb()]), "pair up one to one"),
        (lambda v: v.score("a red circle", [_rgb()]), "descriptions must be a list of str"),
        (lambda v: v.score([None], [_rgb()]), r"descriptions\[0\] must be a str"),
        (lambda v: v.score(["a"], [np.zeros((4, 4, 3))]), r"images\[0\] must be a PIL.Image.Image"),
        (lambda v: v.score(["a"], [_rgb()], batch_size=0), "batch_size must be a positive int"),
        (lambda v: v.embed_text([3]), r"texts\[0\] must be a str"),
    ],
)
def test_bad_input_is_a_clear_value_error(verifier, call, match):
    with pytest.raises(ValueError, match=match):
        call(verifier)


def test_empty_batch_gives_empty_scores(verifier):
    assert verifier.score([], []).shape == (0,)
    assert verifier.embed_images([]).shape == (0, verifier.dim)


def test_not_a_clip_directory_names_what_is_missing(tmp_path, clip_dir):
    with pytest.raises(ValueError, match="not a directory"):
        load_verifier(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json is missing"):
        load_verifier(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ValueError, match="model_type='qwen2_5_vl'"):
        load_verifier(tmp_path)
    (tmp_path / "config.json").write_text((clip_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="missing weights.*preprocessor_config.json.*a tokenizer"):
        load_verifier(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_verifier(tmp_path)
    with pytest.raises(ValueError, match="dtype must be"):
        load_verifier(clip_dir, dtype="float8")


def test_bfloat16_model_returns_float32_scores(clip_dir, verifier):
    half = load_verifier(clip_dir, dtype="bfloat16")
    texts, images = ["a red circle", "a blue square"], [_rgb(), _rgb((0, 0, 255))]
    s = half.score(texts, images)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, verifier.score(texts, images), atol=0.05, rtol=0)


def test_siglip_directory_loads_through_the_same_code_path(tmp_path):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    tokenizer = build_tokenizer(CAPTIONS, 16)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=PAD, bos_token_id=BOS,
                         eos_token_id=EOS),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    SiglipModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    v = load_verifier(tmp_path)
    result = v.score_detailed(["a red circle", "", "red " * 40], [_rgb(), _rgb(), Image.new("L", (5, 700))])
    assert v.model_type == "siglip" and torch.isfinite(result.scores).all()
    assert result.missing.tolist() == [False, True, False] and result.truncated.tolist() == [False, False, True]


# ----------------------------------------------------------------------------- building blocks of the trainer


def test_tokenizer_wraps_with_clip_specials_and_maps_unknown_words():
    tok = build_tokenizer(CAPTIONS, 12)
    ids = tok(["A Red zebra"])["input_ids"][0]
    assert ids[0] == BOS and ids[-1] == EOS and len(ids) == 5
    assert ids[3] == tok.unk_token_id  # "zebra" is not in the captions
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["a", "red"]
    assert EOS != 2  # CLIP pools with argmax(input_ids) when eos_token_id == 2


def test_crop_tensor_equals_the_processor():
    processor = build_image_processor(32)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 50), (32, 32), (90, 20))]
    pairs = [CropPair(im, "x") for im in images]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(CropTensor(pairs, processor).batch([0, 1, 2]), expected, atol=1e-5, rtol=0)


def test_contrastive_loss_by_hand():
    # One image, two texts (its caption, one hard negative), scale exp(0) = 1:
    # logits = [1, 0]; image->text CE = log(1 + e^-1) = 0.31326; text->image has one
    # image, so 0; loss = 0.31326 / 2.
    image = torch.tensor([[1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = contrastive_loss(image, texts, torch.tensor([0]), torch.tensor([0]), torch.tensor(0.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) / 2, abs=1e-6)


def test_contrastive_loss_treats_equal_captions_as_one_positive():
    # Two images share caption 0 (scale 1, all logits 1). image->text: one text, CE 0.
    # text->image: target (0.5, 0.5) against softmax (0.5, 0.5): CE = log 2. Loss = log(2) / 2.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0]])
    loss = contrastive_loss(images, texts, torch.tensor([0, 0]), torch.tensor([0]), torch.tensor(0.0))
    assert loss.item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_auroc_by_hand():
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([0.0])) == 1.0
    assert auroc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.tensor([0.5, 0.2]), torch.tensor([0.3])) == 0.5
    assert auroc(torch.tensor([0.3]), torch.tensor([0.3])) == 0.5  # a tie counts half
    with pytest.raises(ValueError, match="at least one positive"):
        auroc(torch.tensor([]), torch.tensor([1.0]))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=30, patch_size=8), "multiple of patch_size"),
        (dict(vision_width=30, heads=4), "divisible by heads"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(max_text_tokens=3), "max_text_tokens"),
    ],
)
def test_train_config_rejects_bad_combinations(overrides, match):
    with pytest.raises(ValueError, match=match):
        VerifierTrainConfig(**overrides)
