"""SFT data option ``data.localize_only``: transcripts that end after the first tool call."""

from __future__ import annotations

import torch

from mapo.core.config import from_dict
from mapo.data.oracle import oracle_trajectory
from mapo.train.sft import SFTConfig
from mapo.train.sft_data import collate, training_transcripts

torch.set_num_threads(1)


def test_localize_only_trains_exactly_the_first_zoom_turn(policy):
    cfg = from_dict(SFTConfig, {"data": {"localize_only": True, "jitter": 0.0, "wrong_first_zoom": 0.0}})
    batch = training_transcripts(0, 2, policy.processor, cfg)
    inputs, labels = collate(batch, policy, cfg.data.max_length)
    full = from_dict(SFTConfig, {"data": {"jitter": 0.0, "wrong_first_zoom": 0.0}})
    (long,) = training_transcripts(0, 1, policy.processor, full)
    for b, t in enumerate(batch):
        demo = oracle_trajectory(t.sample, rng_or_seed=cfg.data.seed * 1_000_003 + b)
        assert len(demo.assistant_texts) >= 2  # the full transcript has more turns than we keep
        trained = policy.tokenizer.decode(labels[b][labels[b] != -100])
        assert trained == demo.assistant_texts[0] + "<|im_end|>"
        assert str(list(demo.boxes_view[0])).replace(" ", "") in trained.replace(" ", "")
        assert len(t.images) == 1  # only the global view: the crop is never shown
    assert len(long.images) == 2 and len(long.text) > len(batch[0].text)
