"""The tiny CLIP trainer on synthetic crops: pairs, hard negatives, a CI-sized run that beats chance, the CLI."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from mapo.cli import main
from mapo.data import synth
from mapo.verifier import load_verifier
from mapo.verifier.inspect import calibration_groups, evaluate, format_distribution
from mapo.verifier.train import VerifierTrainConfig, split_by_group, train_tiny_clip
from mapo.verifier.pairs import CROP_KINDS, hallucinated_captions, negative_kind, object_phrase, synth_pairs
from mapo.data.task import tool_config_for

CI = dict(synth_level="medium", n_samples=40, crops_per_sample=6, image_size=32, patch_size=8, vision_width=32,
          vision_layers=2, text_width=32, text_layers=1, heads=4, projection_dim=32, steps=80, batch_size=32,
          warmup_steps=10, lr=5e-3, eval_candidates=8, val_fraction=0.25, num_threads=1)


@pytest.fixture(scope="module")
def medium():
    level = synth.level_config("medium")
    return synth.generate(6, 3, level), tool_config_for(level)


def test_object_phrase_matches_the_synthetic_captions(medium):
    samples, _ = medium
    for box in [b for s in samples for b in s.boxes]:
        color, shape = box.label.split()
        assert object_phrase(color, shape, box.caption[-1]) == box.caption


def test_ink_captions_round_trip_and_get_an_ink_negative():
    level = synth.level_config("ink_distractors")
    for box in [b for s in synth.generate(4, 3, level) for b in s.boxes]:
        color, shape = box.label.split()
        glyph, ink = box.caption.split()[-3], box.caption.split()[-1]
        assert object_phrase(color, shape, glyph, ink) == box.caption
    caption = "a red circle with the letter K in cyan"
    negatives = hallucinated_captions(caption, random.Random(0))
    kinds = [negative_kind(caption, n) for n in negatives]
    assert kinds == ["colour", "shape", "glyph", "ink", "empty"]
    assert negatives[3].startswith("a red circle with the letter K in ") and negatives[3] != caption


def test_pattern_captions_round_trip_and_get_a_pattern_negative():
    for box in [b for s in synth.generate(4, 3, "pattern_distractors") for b in s.boxes]:
        color, shape = box.label.split()
        glyph = box.caption.split(" with the letter ")[1][0]
        pattern = box.caption.split(" and ", 1)[1]
        assert object_phrase(color, shape, glyph, pattern=pattern) == box.caption
    caption = "a red circle with the letter K and no pattern"
    negatives = hallucinated_captions(caption, random.Random(0))
    assert [negative_kind(caption, n) for n in negatives] == ["colour", "shape", "glyph", "pattern", "empty"]


def test_hallucinated_captions_change_exactly_one_attribute():
    caption = "a red circle with the letter K and an orange square with the letter B"
    rng = random.Random(0)
    for _ in range(20):
        negatives = hallucinated_captions(caption, rng)
        assert negatives[-1] == "empty background" and caption not in negatives and len(negatives) == 4
        for neg in negatives[:3]:
            a, b = caption.split(), neg.split()
            assert len(a) == len(b)
            changed = [(x, y) for x, y in zip(a, b) if x != y and x not in ("a", "an")]
            assert len(changed) == 1, (caption, neg)
            assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", neg), neg  # the article follows the colour
    [neg] = hallucinated_captions("empty background", rng)
    assert " with the letter " in neg


def test_negative_kind_names_the_changed_attribute():
    caption = "a red circle with the letter K and an orange square with the letter B"
    assert negative_kind(caption, "a red circle with the letter K and a blue square with the letter B") == "colour"
    assert negative_kind(caption, "a red diamond with the letter K and an orange square with the letter B") == "shape"
    assert negative_kind(caption, "a red circle with the letter K and an orange square with the letter Z") == "glyph"
    assert negative_kind(caption, "empty background") == "empty"
    assert negative_kind("empty background", "a red circle with the letter K") == "absent"
    assert negative_kind(caption, "a red circle with the letter K") == "other"  # an object dropped
    rng = random.Random(3)  # the generator's negatives come out in the order colour, shape, glyph, empty
    assert [negative_kind(caption, n) for n in hallucinated_captions(caption, rng)] == ["colour", "shape", "glyph", "empty"]


def test_pattern_captions_only_where_the_crop_shows_the_pattern(monkeypatch):
    """A 2 px pattern survives only an unshrunk crop: shrunk crops are captioned without it."""
    from mapo.verifier import pairs as vt  # where synth_pairs looks crop_scale up

    assert vt.without_patterns(
        "a red circle with the letter K and stripes and a blue square with the letter P and no pattern"
    ) == "a red circle with the letter K and a blue square with the letter P"
    scales, real_scale = [], vt.crop_scale  # the scale of each crop, in the order its pair is made
    monkeypatch.setattr(vt, "crop_scale", lambda crop, box: scales.append(real_scale(crop, box)) or scales[-1])
    level = synth.level_config("pattern_distractors")
    pairs = vt.synth_pairs(synth.generate(12, 5, level), 8, tool_config_for(level), seed=0)
    assert len(scales) == len(pairs)
    named = [any(p in pair.caption for p in synth.PATTERNS) for pair in pairs]
    assert any(named) and not all(named)  # exact-cell object crops keep it, shrunk ones lose it
    for scale, has_pattern, pair in zip(scales, named, pairs):
        if scale < 0.99:
            assert not has_pattern, (scale, pair.caption)
        elif pair.kind == "object":
            assert has_pattern, (scale, pair.caption)


def test_synth_pairs_are_tool_crops_with_ground_truth_captions(medium):
    samples, tool_config = medium
    pairs = synth_pairs(samples, 10, tool_config, seed=1)
    assert len(pairs) == 60 and {p.kind for p in pairs} <= set(CROP_KINDS)
    assert {p.kind for p in pairs} >= {"object", "partial"}
    for p in pairs:  # the zoom tool's output: sides are multiples of its factor, near the observation budget
        assert p.image.mode == "RGB" and p.image.width % tool_config.factor == 0 == p.image.height % tool_config.factor
        assert 0.5 < p.image.width * p.image.height / tool_config.obs_max_pixels < 1.5
        assert p.caption and p.caption not in p.negatives
    assert any(p.caption == "empty background" for p in pairs)
    assert pairs[0].image.tobytes() == synth_pairs(samples, 10, tool_config, seed=1)[0].image.tobytes()  # seeded
    train, val = split_by_group(pairs, 0.34, seed=0)
    assert not {p.group for p in train} & {p.group for p in val} and len(train) + len(val) == len(pairs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_clip")
    metrics = train_tiny_clip(VerifierTrainConfig(**CI), out, progress=False)
    return out, metrics


def test_a_few_seconds_of_training_beat_chance_by_a_wide_margin(trained):
    out, metrics = trained
    val = metrics["val"]
    chance = 1 / CI["eval_candidates"]
    assert val["retrieval_top1"] >= 3 * chance, val  # chance is 0.125
    assert val["auroc_random"] >= 0.8, val
    assert val["s_correct"] > val["s_random"], val
    assert set(val["hard_win"]) <= {"colour", "shape", "glyph", "empty", "absent"}, val
    assert val["hard_win"]["colour"] > 0.6, val  # colour is the first attribute learned
    saved = json.loads((out / "metrics.json").read_text())["val"]
    assert saved.pop("hard_win") == pytest.approx(val["hard_win"])
    assert saved == pytest.approx({k: v for k, v in val.items() if k != "hard_win"}, nan_ok=True)


def test_a_random_model_does_not_beat_chance(tmp_path, trained):
    # The same evaluation on an untrained model: guards against a metric that is high by construction.
    metrics = train_tiny_clip(VerifierTrainConfig(**{**CI, "steps": 1, "lr": 1e-9, "n_samples": 24}), tmp_path,
                              progress=False)
    assert metrics["val"]["auroc_random"] < 0.75


def test_saved_directory_is_a_standard_clip_directory(trained):
    out, _ = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "verifier_train.yaml"):
        assert (out / name).is_file(), name
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(out, local_files_only=True)
    assert model.config.vision_config.image_size == CI["image_size"]
    assert AutoTokenizer.from_pretrained(out, local_files_only=True)("a red circle")["input_ids"][-1] == (
        model.config.text_config.eos_token_id
    )


def test_calibration_view_orders_correct_above_wrong(trained, medium):
    out, _ = trained
    samples, tool_config = medium
    v = load_verifier(out)
    groups = calibration_groups(v, synth_pairs(samples, 6, tool_config, seed=5))
    assert set(groups) == {"correct", "partial", "wrong", "empty"}
    assert groups["empty"].tolist() == [v.s_missing]
    assert groups["correct"].mean() > groups["wrong"].mean()
    text = format_distribution(groups)
    assert "correct" in text and "p50" in text and "#" in text


def test_cli_score_and_errors(trained, tmp_path, capsys):
    out, _ = trained
    image = tmp_path / "crop.png"
    synth.generate(1, 0, "easy")[0].load_image().save(image)
    assert main(["verifier", "score", "--model", str(out), "--image", str(image), "--text", "a red circle",
                 "--image", str(image), "--text", ""]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("-1.0000") and "s_missing" in lines[1]
    assert main(["verifier", "score", "--model", str(tmp_path), "--image", str(image), "--text", "x"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["verifier", "score", "--model", str(out), "--image", str(image)] + ["--text", "x"] * 2) == 2
    assert "pair up" in capsys.readouterr().err


def test_logit_scale_init_sets_the_initial_temperature_and_is_validated():
    from mapo.verifier.tiny_clip import build_tiny_clip

    config = VerifierTrainConfig(**{**CI, "logit_scale_init": 30.0})
    assert build_tiny_clip(config, vocab_size=50).logit_scale.exp().item() == pytest.approx(30.0)
    with pytest.raises(ValueError, match="logit_scale_init"):
        VerifierTrainConfig(logit_scale_init=150.0)


def test_focus_weight_counts_a_hard_negative_w_times_in_its_image_softmax():
    from mapo.verifier.train import contrastive_loss

    image = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    positive, captions, scale = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor(0.0)
    plain = contrastive_loss(image, text, positive, captions, scale)
    assert torch.equal(contrastive_loss(image, text, positive, captions, scale, torch.zeros(2, 3)), plain)
    weight = torch.zeros(2, 3)
    weight[0, 2] = torch.tensor(20.0).log()  # text 2 is image 0's hard negative of the focus attribute
    logits = image @ text.T
    # by hand: image 0's softmax denominator counts text 2 twenty times; image 1 and text->image unchanged
    def nll(row, extra):
        return -(logits[row, positive[row]] - torch.log(logits[row].exp().sum() + extra))
    i2t_plain = (nll(0, 0.0) + nll(1, 0.0)) / 2
    i2t_focus = (nll(0, 19 * logits[0, 2].exp()) + nll(1, 0.0)) / 2
    focused = contrastive_loss(image, text, positive, captions, scale, weight)
    torch.testing.assert_close(focused - plain, (i2t_focus - i2t_plain) / 2)
    with pytest.raises(ValueError, match="focus_attribute"):
        VerifierTrainConfig(focus_attribute="texture")
    with pytest.raises(ValueError, match="focus_weight"):
        VerifierTrainConfig(focus_weight=0.5)


def test_focus_attribute_training_runs(tmp_path):
    metrics = train_tiny_clip(
        VerifierTrainConfig(**{**CI, "synth_level": "pattern_distractors", "steps": 4, "focus_attribute": "pattern",
                               "focus_weight": 20.0}),
        tmp_path / "v", progress=False,
    )
    assert metrics["steps"] == 4 and metrics["final_loss"] == metrics["final_loss"]  # finite, not NaN


def test_defaults_match_the_shipped_recipe():
    # configs/verifier_tiny.yaml is the embedded default; the pipeline's `verifier:` section starts
    # from the dataclass defaults, so the two must not drift (num_threads is speed-only).
    from pathlib import Path

    from mapo.core.config import load_config

    shipped = load_config(VerifierTrainConfig, Path(__file__).parents[1] / "configs/verifier_tiny.yaml", [])
    assert {**vars(shipped), "num_threads": 0} == {**vars(VerifierTrainConfig()), "num_threads": 0}


def test_cli_train_show_config_and_bad_override(capsys, tmp_path):
    assert main(["verifier", "train", "--out", str(tmp_path), "--show-config"]) == 0
    assert "hard_negatives" in capsys.readouterr().out
    assert main(["verifier", "train", "--out", str(tmp_path), "--set", "patch_size=9"]) == 2
    assert "multiple of patch_size" in capsys.readouterr().err


def test_evaluate_rejects_single_caption_sets(trained, medium):
    out, _ = trained
    samples, tool_config = medium
    pairs = synth_pairs(samples, 2, tool_config, seed=0)
    for p in pairs:
        p.caption = "empty background"
    with pytest.raises(ValueError, match="two different captions"):
        evaluate(load_verifier(out), pairs)
    assert torch.is_tensor(load_verifier(out).score([pairs[0].caption], [pairs[0].image]))
