"""SFT warm start and the shared training utilities (mapo.train.checkpoint, optim, metrics_log; mapo.core.run_dir)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mapo.core.config import from_dict
from mapo.core.run_dir import prepare_run_dir
from mapo.train.checkpoint import capture_rng_state, latest_checkpoint, load_trainer_state, restore_rng_state, save_checkpoint, seed_everything
from mapo.train.metrics_log import MetricsLogger, read_metrics
from mapo.train.optim import OptimConfig, build_scheduler, lr_factor
from mapo.train.sft import SFTConfig, masked_lm_loss, run_sft
from mapo.train.sft_data import assistant_mask, collate, make_transcript, training_transcripts
from mapo.data.task import tool_config_for

torch.set_num_threads(1)

# A CI-sized run: 2 distinct samples (so the loss is measured on data it trains on), tiny eval.
TINY_RUN = {
    "steps": 4,
    "batch_size": 2,
    "log_every": 1,
    "eval_every": 0,
    "save_every": 0,
    "tensorboard": True,
    "progress": False,
    "data": {"n_train": 2, "jitter": 0.0, "wrong_first_zoom": 0.0},
    "optim": {"lr": 3e-3, "warmup_frac": 0.0, "schedule": "constant"},
    "eval": {"n_teacher_forced": 2, "n_rollout": 0},
}


def _cfg(**overrides) -> SFTConfig:
    data = json.loads(json.dumps(TINY_RUN))
    for k, v in overrides.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return from_dict(SFTConfig, data)


# ----------------------------------------------------------------------------- masks


def test_assistant_mask_by_hand():
    # header = [1, 2], end = 9: two assistant turns, the second cut by padding (0s) without an end.
    ids = torch.tensor([[5, 1, 2, 7, 8, 9, 3, 1, 2, 4, 9, 0], [1, 2, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    mask = assistant_mask(ids, [1, 2], 9)
    assert mask[0].nonzero().squeeze(-1).tolist() == [3, 4, 5, 9, 10]  # turn tokens + their end id
    assert mask[1].nonzero().squeeze(-1).tolist() == list(range(2, 12))  # runs on until an end (padding is masked later)


def test_labels_are_exactly_the_assistant_turns(policy):
    cfg = _cfg(data={"jitter": 0.3, "wrong_first_zoom": 0.5, "n_train": 0})
    batch = training_transcripts(0, 3, policy.processor, cfg)
    inputs, labels = collate(batch, policy, cfg.data.max_length)
    tok = policy.tokenizer
    image_id = policy.model.config.image_token_id
    for b, t in enumerate(batch):
        trained = labels[b][labels[b] != -100]
        from mapo.data.oracle import oracle_trajectory

        demo = oracle_trajectory(
            t.sample, rng_or_seed=cfg.data.seed * 1_000_003 + b, jitter=0.3, wrong_first_zoom=0.5,
        )
        expected = "".join(text + "<|im_end|>" for text in demo.assistant_texts)
        assert tok.decode(trained) == expected
    # Nothing outside the loss leaks in: no image tokens, no padding, no user/system text.
    assert not (labels == image_id).any()
    assert (labels[inputs["attention_mask"] == 0] == -100).all()
    assert inputs["mm_token_type_ids"].shape == inputs["input_ids"].shape


def test_global_image_is_the_view_the_rollout_shows(policy):
    cfg = _cfg()
    (t,) = training_transcripts(0, 1, policy.processor, cfg)
    assert t.images[0].size == (112, 112)  # easy level: view_side 112
    assert all(im.size == (224, 224) for im in t.images[1:])  # obs_side 224


def test_masked_loss_matches_full_logits(policy):
    """Computing logits only where labels follow gives the same loss as the full forward."""
    cfg = _cfg()
    inputs, labels = collate(training_transcripts(0, 2, policy.processor, cfg), policy, 4096)
    with torch.no_grad():
        loss, stats = masked_lm_loss(policy.model, inputs, labels)
        logits = policy.model(**inputs).logits  # (B, T, V)
        full = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)
    assert torch.allclose(loss, full, atol=1e-5)
    assert stats["tokens"] == float((labels[:, 1:] != -100).sum())


def test_coordinate_and_letter_weights_by_hand(policy):
    """Numbers weigh coord_weight, single capital letters letter_weight, the rest 1 (a weighted mean)."""
    from mapo.train.sft_metrics import TokenClasses

    cfg = _cfg()
    classes = TokenClasses.of(policy.tokenizer)
    inputs, labels = collate(training_transcripts(0, 2, policy.processor, cfg), policy, 4096)
    with torch.no_grad():
        loss, stats = masked_lm_loss(
            policy.model, inputs, labels, coord_weight=3.0, letter_weight=7.0, token_classes=classes
        )
        logits = policy.model(**inputs).logits[:, :-1]  # (B, T-1, V)
    targets = labels[:, 1:]
    valid = targets != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    tokens = [[policy.tokenizer.convert_ids_to_tokens(int(i)).lstrip("Ġ") for i in row.clamp(min=0)] for row in targets]
    weight = torch.tensor([[3.0 if t.isdigit() else 7.0 if len(t) == 1 and "A" <= t <= "Z" and t != "I" else 1.0 for t in row] for row in tokens])
    weight = weight * valid
    assert torch.allclose(loss, (ce * weight).sum() / weight.sum(), atol=1e-5)
    letters = (weight == 7.0).sum()
    assert letters >= 6 and stats["letter_token_count"] == float(letters)  # glyph twice + answer letter, per transcript
    hits = (logits.argmax(-1) == targets) & (weight == 7.0)
    assert stats["letter_token_acc"] == pytest.approx(float(hits.sum() / letters))
    assert stats["coord_token_count"] == float((weight == 3.0).sum())
    assert not hasattr(policy.model, "_mapo_number_ids")  # the classes travel explicitly, not on the model


def test_answer_word_tokens_are_found_and_weighted(policy):
    """On the pattern level the answer word is spelled twice per transcript (description, thought):
    those runs of tokens, and nothing else, weigh word_weight."""
    import dataclasses

    from mapo.train.sft_data import answer_word_mask

    cfg = _cfg()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, level="pattern"))
    batch = training_transcripts(0, 2, policy.processor, cfg)
    inputs, labels = collate(batch, policy, 4096)
    mask = answer_word_mask(batch, labels, policy.tokenizer)  # (B, T)
    for b, transcript in enumerate(batch):
        word = policy.tokenizer(" " + transcript.sample.answer_text, add_special_tokens=False)["input_ids"]
        assert int(mask[b].sum()) == 2 * len(word)
        assert labels[b][mask[b]].tolist() == word * 2
    with torch.no_grad():
        plain, _ = masked_lm_loss(policy.model, inputs, labels)
        weighted, stats = masked_lm_loss(policy.model, inputs, labels, word_mask=mask, word_weight=5.0)
        logits = policy.model(**inputs).logits[:, :-1]  # (B, T-1, V)
    targets, words = labels[:, 1:], mask[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    weight = torch.where(words, 5.0, 1.0) * (targets != -100)
    assert torch.allclose(weighted, (ce * weight).sum() / weight.sum(), atol=1e-5)
    assert not torch.allclose(weighted, plain) and stats["word_token_count"] == float(words.sum())


# ----------------------------------------------------------------------------- the recipe


def test_tiny_sft_run_learns_and_writes_everything(tmp_path, capsys):
    from mapo.cli import main

    run = tmp_path / "run"
    final = run_sft(_cfg(), run)
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.5, losses  # same 2 samples every step: must fit them
    assert np.isfinite(final["eval/loss"])
    assert {"config.yaml", "run.json", "eval.json", "metrics.jsonl", "tb", "final", "checkpoints"} <= {
        p.name for p in run.iterdir()
    }
    assert list((run / "tb").iterdir()), "no TensorBoard events"
    assert main(["sft", "--summary", str(run)]) == 0
    assert "train/loss" in capsys.readouterr().out
    # The final policy is a standard HF directory that loads, and its weights moved.
    from mapo.policy import build_tiny_policy, load_policy

    trained = load_policy(run / "final")
    assert trained.protocol == _cfg().protocol  # it records the prompts it was trained on
    init = build_tiny_policy("tiny", seed=0)
    w0 = init.model.lm_head.weight
    assert not torch.equal(trained.model.lm_head.weight, w0)


def test_resume_is_exact(tmp_path):
    """4 steps in one go == 2 steps, stop, resume for 2: same weights, same logged losses."""
    straight, split = tmp_path / "a", tmp_path / "b"
    run_sft(_cfg(), straight)
    assert run_sft(_cfg(), split, stop_after=2) == {}
    assert latest_checkpoint(split).name == "step_000002"
    run_sft(_cfg(log_every=1), split, resume=True)
    wa = load_file(straight / "final" / "model.safetensors")
    wb = load_file(split / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la = [r["train/loss"] for r in read_metrics(straight / "metrics.jsonl") if "train/loss" in r]
    lb = [r["train/loss"] for r in read_metrics(split / "metrics.jsonl") if "train/loss" in r]
    assert la == lb


def test_run_dir_guard(tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(steps=1)
    ignore = ("log_every",)
    prepare_run_dir(run, cfg, kind="sft", resume=False, ignore=ignore)
    with pytest.raises(ValueError, match="not empty .*--resume"):
        prepare_run_dir(run, cfg, kind="sft", resume=False, ignore=ignore)
    with pytest.raises(ValueError, match="different run .*at: optim.lr\\)"):
        prepare_run_dir(run, _cfg(steps=1, optim={"lr": 1e-4}), kind="sft", resume=True, ignore=ignore)
    with pytest.raises(ValueError, match="holds a 'sft' run"):
        prepare_run_dir(run, cfg, kind="rl", resume=True, ignore=ignore)
    # Logging knobs may change on resume.
    prepare_run_dir(run, _cfg(steps=1, log_every=7), kind="sft", resume=True, ignore=ignore)


def test_config_rejects_eval_on_training_seed():
    with pytest.raises(ValueError, match="eval.seed must differ from data.seed"):
        _cfg(eval={"seed": 0})


# ----------------------------------------------------------------------------- common utilities


def test_lr_schedule_by_hand():
    cfg = OptimConfig(lr=1.0, warmup_frac=0.1, min_lr_ratio=0.0, schedule="cosine")
    # 100 steps: warmup 10 -> factors 0.1 .. 1.0; then cosine from 1 to 0 over 90 steps.
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)  # halfway: (1 + cos(pi/2)) / 2
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)
    lin = OptimConfig(lr=1.0, warmup_frac=0.0, min_lr_ratio=0.2, schedule="linear")
    assert lr_factor(50, 100, lin) == pytest.approx(0.2 + 0.8 * 0.5)


def test_rng_capture_restores_every_generator():
    seed_everything(3)
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_half_written_checkpoint_is_ignored(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = build_scheduler(opt, OptimConfig(), 10)
    save = lambda d: (d.mkdir(), torch.save(model.state_dict(), d / "w.pt"))  # noqa: E731
    save_checkpoint(tmp_path, 1, save_model=save, optimizer=opt, scheduler=sched, state={"cursor": 4})
    (tmp_path / "checkpoints" / ".step_000002.tmp").mkdir()  # a crash mid-save
    (tmp_path / "checkpoints" / "step_000003").mkdir()  # no state.json: incomplete
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step_000001"
    assert load_trainer_state(ckpt, opt, sched) == {"step": 1, "cursor": 4}


def test_metrics_logger_truncates_after_resume_point(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for s in (1, 2, 3):
        log.log(s, {"x": s})
    log.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    with pytest.raises(ValueError, match="metric 'bad' must be a number"):
        log.log(4, {"bad": "text"})


def test_cli_show_config_and_bad_override(capsys, tmp_path):
    from mapo.cli import main

    assert main(["sft", "--show-config"]) == 0
    assert "batch_size" in capsys.readouterr().out
    assert main(["sft", "--out", str(tmp_path / "r"), "nonsense=1"]) == 2
    assert "unknown config key(s) nonsense" in capsys.readouterr().err


def test_sft_tokens_match_the_rollout(policy):
    """The SFT transcript and a rollout forced to say the oracle's turns are the same ids and mask.

    (The SFT text ends with the template's newline after the last <|im_end|>; it is unlabelled.)
    """
    from mapo.data import synth
    from mapo.data.oracle import oracle_trajectory
    from mapo.data.task import tool_config_for
    from mapo.engine.rollout import RolloutConfig, rollout

    cfg = _cfg()
    (sample,) = synth.generate(1, seed=5, config="easy")
    demo = oracle_trajectory(sample, rng_or_seed=0)
    transcript = make_transcript(sample, policy.processor, seed=0, data=cfg.data, protocol=cfg.protocol)
    inputs, labels = collate([transcript], policy, 4096)
    rc = RolloutConfig(group_size=1, greedy=True, max_turns=4, tool=tool_config_for(sample))
    forced = lambda g, m, k: demo.assistant_texts[k] if k < len(demo.assistant_texts) else None  # noqa: E731
    (traj,) = rollout([sample], policy, rc, forced_turns=forced)
    ids = inputs["input_ids"][0].tolist()
    assert ids[: len(traj.input_ids)] == traj.input_ids.tolist()
    assert policy.tokenizer.decode(ids[len(traj.input_ids) :]) == "\n"
    mask = (labels[0] != -100)[: len(traj.loss_mask)]
    assert torch.equal(mask, traj.loss_mask)
    # The rollout's recorded log-probs are those of the SFT forward, renormalised without the
    # vision ids (which the rollout can never sample).
    with torch.no_grad():
        logits = policy.model(**inputs).logits[0].float()  # (T, V)
    logits[:, policy.vision_token_ids] = float("-inf")
    logp = torch.log_softmax(logits, -1)
    n = len(traj.input_ids)
    mine = logp[: n - 1].gather(-1, traj.input_ids[1:, None]).squeeze(-1)  # (T-1,) log p(token t+1)
    assert torch.allclose(mine[mask[1:]], traj.logprobs[1:][mask[1:]], rtol=0, atol=1e-4)


def test_a_fresh_policy_takes_the_training_levels_image_sizes():
    """A level with 448 px observations gets a processor that passes them unchanged (no silent resize)."""
    from mapo.data import synth
    from mapo.policy.processor import check_no_resize
    from mapo.train.sft import PolicySpec, build_policy

    level = synth.level_config("easy", obs_side=448)
    policy = build_policy(PolicySpec(overrides={"text_layers": 1, "vision_depth": 1}), tool_config_for(level))
    check_no_resize(policy.processor, 448, 448)
    with pytest.raises(ValueError):
        check_no_resize(build_policy(PolicySpec(overrides={"text_layers": 1, "vision_depth": 1})).processor, 448, 448)


def test_glyph_hint_states_the_glyph_in_the_prompt_only_for_that_fraction(policy):
    """glyph_hint=1 appends the target's glyph to the question; 0 leaves transcripts unchanged."""
    import dataclasses

    cfg = _cfg()
    sample = training_transcripts(0, 1, policy.processor, cfg)[0].sample
    glyph = sample.options[ord(sample.answer) - ord("A")]
    plain = make_transcript(sample, policy.processor, seed=3, data=cfg.data, protocol=cfg.protocol)
    hinted = make_transcript(
        sample, policy.processor, seed=3, data=dataclasses.replace(cfg.data, glyph_hint=1.0), protocol=cfg.protocol
    )
    assert f"Hint: the letter is {glyph}." in hinted.text and "Hint:" not in plain.text
    assert hinted.text.replace(f"\nHint: the letter is {glyph}.", "") == plain.text  # nothing else changes
    with pytest.raises(ValueError, match="glyph_hint"):
        dataclasses.replace(cfg.data, glyph_hint=1.5)


def test_option_scan_marks_every_option_and_verdict(policy):
    """With option_scan the word mask also covers each option's text and the yes/no verdicts."""
    import dataclasses

    from mapo.train.sft_data import answer_word_mask

    cfg = _cfg()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, level="pattern", option_scan=True))
    batch = training_transcripts(0, 2, policy.processor, cfg)
    _, labels = collate(batch, policy, 4096)
    plain = answer_word_mask(batch, labels, policy.tokenizer)
    scan = answer_word_mask(batch, labels, policy.tokenizer, option_scan=True)
    assert bool((scan | plain).eq(scan).all()) and int(scan.sum()) > int(plain.sum())
    tok = policy.tokenizer
    for b, transcript in enumerate(batch):
        s = transcript.sample
        lines = ord(s.answer) - ord("A") + 1  # the scan stops at the answer's line
        spelled = [tok(" " + o, add_special_tokens=False)["input_ids"] for o in s.options[:lines]]
        verdicts = [tok(" " + v, add_special_tokens=False)["input_ids"] for v in ("no",) * (lines - 1) + ("yes",)]
        # answer word in the description and the thought's first sentence, then each scanned option and verdict
        expected = 2 * len(tok(" " + s.answer_text, add_special_tokens=False)["input_ids"])
        expected += sum(map(len, spelled)) + sum(map(len, verdicts))
        assert int(scan[b].sum()) == expected


def test_search_words_mark_the_colour_shape_and_verdict_words(policy):
    """With search_words the mask is the answer word's plus every labelled run of a colour, a shape and " not"."""
    import dataclasses

    import torch

    from mapo.data.synth_render import COLORS, SHAPES
    from mapo.train.sft_data import answer_word_mask
    from mapo.train.sft_data import token_runs

    cfg = _cfg()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, level="pattern_distractors", search_misses=2))
    batch = training_transcripts(0, 4, policy.processor, cfg)
    _, labels = collate(batch, policy, 4096)
    plain = answer_word_mask(batch, labels, policy.tokenizer)
    search = answer_word_mask(batch, labels, policy.tokenizer, search_words=True)
    expected = plain.clone()
    for b in range(len(batch)):
        row = labels[b].tolist()
        for word in [*COLORS, *SHAPES, "not", "empty"]:
            ids = policy.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            for k in token_runs(row, ids):
                expected[b, k : k + len(ids)] = True
    assert torch.equal(search, expected)
    assert int(search.sum()) > int(plain.sum()) + 4 * 3  # at least a label, a description and a thought per row
