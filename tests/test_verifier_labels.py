"""The verifier's label pairs: a tool call's short label ("red square") against crops of its object, of the
image's other objects and of empty cells (``label_texts``), the loss's mask of texts also true of a crop, and
the held-out label metric."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from mapo.cli import main
from mapo.data import synth
from mapo.verifier.inspect import auroc, evaluate_labels
from mapo.verifier.pairs import CropPair, is_label_pair, label_pair, label_variants, objects_inside
from mapo.verifier.train import CropTensor, VerifierTrainConfig, _epoch_order, contrastive_loss, train_tiny_clip
from mapo.verifier.pairs import synth_pairs
from mapo.verifier.tiny_clip import build_image_processor
from mapo.data.task import tool_config_for


@pytest.fixture(scope="module")
def scenes():
    level = synth.level_config("pattern_distractors")
    return synth.generate(6, 3, level), tool_config_for(level)


def test_label_pairs_contrast_a_label_with_the_other_objects_of_its_image(scenes):
    samples, tool_config = scenes
    pairs = synth_pairs(samples, 8, tool_config, seed=1, label_frac=1.0)
    by_id = {s.id: s for s in samples}
    labelled = [p for p in pairs if p.kind == "label"]
    scenes_ = [p for p in pairs if p.kind == "label_scene"]
    assert labelled and any(p.caption == "empty background" for p in scenes_)
    for p in labelled:
        labels = [b.label for b in by_id[p.group].boxes]
        assert p.caption in labels and len(p.caption.split()) == 2  # "red square": the policy's label form
        others = set(labels) - {p.caption}
        assert others <= set(p.negatives), "every other object of the image is a negative"
        assert "empty background" in p.negatives and len(p.matches) == 1  # the matches hold the crop's caption
        assert p.matches[0].startswith(("a ", "an ")) and p.caption.split()[1] in p.matches[0]
    for p in scenes_:
        if p.caption == "empty background":  # an empty crop: every label of the image is what a call could ask
            assert set(p.negatives) == {b.label for b in by_id[p.group].boxes}
    for p in pairs:
        assert p.caption not in p.negatives and not set(p.matches) & set(p.negatives)


def test_label_frac_keeps_the_caption_pairs_and_zero_adds_nothing(scenes):
    samples, tool_config = scenes
    plain = synth_pairs(samples, 8, tool_config, seed=1)
    mixed = synth_pairs(samples, 8, tool_config, seed=1, label_frac=0.5)
    captions = [p for p in mixed if not is_label_pair(p)]
    assert not any(p.matches for p in plain) and not any(is_label_pair(p) for p in plain)
    assert [(p.caption, p.negatives, p.image.tobytes()) for p in captions] == [
        (p.caption, p.negatives, p.image.tobytes()) for p in plain
    ]  # the label stream has its own seed: the caption pairs are those of a run without labels
    n_label = len(mixed) - len(captions)
    assert 0.2 * len(plain) < n_label < 0.8 * len(plain)
    for p in captions:  # a caption pair lists the labels of the objects it shows as also true
        assert len(p.matches) == (0 if p.caption == "empty background" else p.caption.count(" with the letter "))


def test_label_pair_cases_by_hand():
    from mapo.data.sample import Box

    red, blue = Box(0, 0, 10, 10, label="red square"), Box(20, 0, 30, 10, label="blue circle")
    image = Image.new("RGB", (4, 4))
    rng = random.Random(0)
    assert objects_inside([red, blue], (0, 0, 12, 12)) == [red]
    assert objects_inside([red, blue], (5, 0, 30, 10)) == [red, blue]  # half of red's area is inside: it counts
    _, text, negatives, matches = label_pair(image, "a red square with the letter K", [red], [red, blue], rng)
    assert text == "red square" and matches == ("a red square with the letter K",)
    assert negatives[0] == "blue circle" and negatives[-1] == "empty background" and len(negatives) == 4
    assert [w for v in negatives[1:3] for w in v.split()].count("square") + [
        w for v in negatives[1:3] for w in v.split()].count("red") == 2  # one word changed each
    _, text, negatives, matches = label_pair(image, "empty background", [], [red, blue], rng)
    assert (text, negatives, matches) == ("empty background", ["red square", "blue circle"], ())
    both = "a red square with the letter K and a blue circle with the letter P"
    assert label_pair(image, both, [red, blue], [red, blue], rng) is None  # nothing of the image left to contrast
    assert label_variants("big thing", rng) == [] and len(label_variants("red square", rng)) == 2


def test_a_text_true_of_a_crop_is_neither_its_negative_nor_a_wrong_image():
    image = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    positive, captions, scale = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor(0.0)
    plain = contrastive_loss(image, text, positive, captions, scale)
    only_positives = torch.zeros(2, 3, dtype=torch.bool)
    assert torch.allclose(contrastive_loss(image, text, positive, captions, scale, true=only_positives), plain)
    true = only_positives.clone()
    true[0, 1] = True  # text 1 (image 1's caption) is also true of image 0
    logits = image @ text.T
    i2t = (-(logits[0, 0] - torch.logsumexp(logits[0, [0, 2]], 0)) - (logits[1, 1] - torch.logsumexp(logits[1], 0))) / 2
    t2i_0 = -(logits[0, 0] - torch.logsumexp(logits[:, 0], 0))
    t2i_1 = -(0.5 * (logits[0, 1] + logits[1, 1]) - torch.logsumexp(logits[:, 1], 0))  # both images are its positives
    torch.testing.assert_close(contrastive_loss(image, text, positive, captions, scale, true=true),
                               (i2t + (t2i_0 + t2i_1) / 2) / 2)


def test_same_image_batches_keep_a_sample_together_and_crops_are_stored_once():
    image_a, image_b = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    pairs = [CropPair(image_a, "x", group="g1"), CropPair(image_b, "y", group="g2"),
             CropPair(image_a, "red square", kind="label", group="g1"), CropPair(image_b, "z", group="g3")]
    for seed in range(5):
        order = _epoch_order(pairs, True, random.Random(seed))
        assert sorted(order) == [0, 1, 2, 3] and abs(order.index(0) - order.index(2)) == 1
    crops = CropTensor(pairs, build_image_processor(16))
    assert crops.data.shape[0] == 2 and torch.equal(crops.batch([0]), crops.batch([2]))
    assert not torch.equal(crops.batch([0]), crops.batch([1]))


class _Table:
    """A verifier whose embeddings are looked up: images by their colour, texts by their string."""

    def __init__(self, images: dict, texts: dict):
        self.images, self.texts = images, texts

    def embed_images(self, images, batch_size=64):
        return torch.nn.functional.normalize(torch.tensor([self.images[i.getpixel((0, 0))] for i in images]), dim=-1)

    def embed_text(self, texts, batch_size=64):
        return torch.nn.functional.normalize(torch.tensor([self.texts[t] for t in texts]), dim=-1)


def test_evaluate_labels_by_hand():
    red, blue, empty = (Image.new("RGB", (4, 4), c) for c in ("red", "blue", "white"))
    v = _Table({(255, 0, 0): [1.0, 0.0, 0.0], (0, 0, 255): [0.6, 0.8, 0.0], (255, 255, 255): [0.0, 0.0, 1.0]},
               {"red square": [1.0, 0.0, 0.0], "blue circle": [0.0, 1.0, 0.0], "empty background": [0.0, 0.0, 1.0]})
    pairs = [
        CropPair(red, "a red square", ["a blue square"], "object", "g", matches=("red square",)),
        CropPair(blue, "a blue circle", ["a red circle"], "object", "g", matches=("blue circle",)),
        CropPair(empty, "empty background", ["a red square"], "background", "g"),
        CropPair(red, "red square", ["blue circle", "empty background"], "label", "g", matches=("a red square",)),
        CropPair(blue, "blue circle", ["red square", "empty background"], "label", "g", matches=("a blue circle",)),
    ]
    m = evaluate_labels(v, pairs)
    # hits: s(red square, red) = 1, s(blue circle, blue) = 0.8; misses: red square vs blue (0.6) and empty (0),
    # blue circle vs red (0) and empty (0)
    assert (m["n_hits"], m["n_misses"]) == (2, 4)
    assert m["label_auroc"] == pytest.approx(auroc(torch.tensor([1.0, 0.8]), torch.tensor([0.6, 0.0, 0.0, 0.0])))
    assert m["label_auroc"] == 1.0 and m["s_label_miss"] == pytest.approx(0.15)
    assert m["label_win"] == 1.0  # red crop: "blue circle" 0 < 1; blue crop: "red square" 0.6 < 0.8
    v.images[(0, 0, 255)] = [1.0, 0.1, 0.0]  # a blue crop the verifier sees as red: its label loses to "red square"
    m = evaluate_labels(v, pairs)
    assert m["label_win"] == 0.5 and m["label_auroc"] == pytest.approx(7 / 8)  # 0.0995 < 0.995, the one lost pair
    with pytest.raises(ValueError, match="label pairs"):
        evaluate_labels(v, pairs[:3])


def test_label_training_runs_and_reports_the_label_metric(tmp_path):
    config = VerifierTrainConfig(
        synth_level="pattern_distractors", n_samples=16, crops_per_sample=4, image_size=32, patch_size=8,
        vision_width=32, vision_layers=1, text_width=32, text_layers=1, heads=4, projection_dim=32, steps=4,
        batch_size=32, warmup_steps=1, eval_candidates=4, val_fraction=0.3, num_threads=1, label_texts=True,
        same_image_batches=True,
    )
    metrics = train_tiny_clip(config, tmp_path / "v", progress=False)
    labels = metrics["val_labels"]
    assert labels["n_hits"] > 0 and labels["n_misses"] > labels["n_hits"] and 0.0 <= labels["label_auroc"] <= 1.0
    assert "hard_win" in metrics["val"] and metrics["val"]["n_pairs"] < metrics["n_pairs"]
    with pytest.raises(ValueError, match="label_frac"):
        VerifierTrainConfig(label_frac=0.0)


def test_cli_shows_the_label_knobs(capsys, tmp_path):
    assert main(["verifier", "train", "--out", str(tmp_path), "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "label_texts" in out and "same_image_batches" in out
