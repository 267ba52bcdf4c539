"""The goal metrics and diagnoses of research/warmstart_sweep.py, on a two-step SFT run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import warmstart_sweep as ws

TINY = [
    "steps=2", "batch_size=2", "eval.n_teacher_forced=2", "eval.n_rollout=2", "eval.max_turns=2",
    "eval.max_new_tokens_per_turn=12", "policy.overrides={text_layers: 1, vision_depth: 1}", "threads=1",
]


def test_description_matching_by_hand():
    caption = "a red triangle with the letter K and a blue circle with the letter P"
    assert ws.description_matches("a blue circle with the letter P and a red triangle with the letter K", caption) == (True, True)
    assert ws.description_matches("a red triangle with the letter K", caption) == (False, False)
    assert ws.description_matches("a red triangle with the letter X and a blue circle with the letter P", caption) == (True, False)
    assert ws.description_matches("empty background", "empty background") == (True, True)
    assert ws.description_matches("a red square with the letter A", "empty background") == (False, False)
    assert ws.description_matches(None, "a green square with the letter A") == (False, False)


def test_config_diff_names_recipe_keys_only():
    base = {"steps": 10, "threads": 1, "data": {"level": "easy", "synth": {}}, "eval": {"n_rollout": 4}}
    run = {"steps": 20, "threads": 2, "data": {"level": "easy", "synth": {"object_frac": 0.5}}, "eval": {"n_rollout": 8}}
    assert ws.config_diff(run, base) == ['data.synth={"object_frac":0.5}', "steps=20"]


def test_answer_turn_is_the_oracle_final_turn_for_each_option():
    from mapo.data.oracle import oracle_trajectory
    from mapo.agent.protocol import DEFAULT_CONFIG

    sample = ws.heldout("easy", 1)[0]

    final = oracle_trajectory(sample, rng_or_seed=0).assistant_texts[-1]
    mine = ws.answer_turn(sample, sample.answer, DEFAULT_CONFIG)
    assert final.endswith(mine)  # the oracle's turn also opens with the description of the crop
    other = next(letter for letter in "ABCD" if letter != sample.answer)
    assert f"<answer>{other}</answer>" in ws.answer_turn(sample, other, DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Stage 1 of the recipe (configs/warmstart_letters.yaml) through the project's SFT recipe, at tiny scale."""
    from mapo.core.config import load_config
    from mapo.train.sft import SFTConfig, run_sft

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("ws") / "run"
    cfg = load_config(SFTConfig, ws.BASE_CONFIG, TINY)
    run_sft(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def tiny_pattern_run(tmp_path_factory):
    """The same recipe on the pattern level (the question asks the object's surface pattern)."""
    from mapo.core.config import load_config
    from mapo.train.sft import SFTConfig, run_sft

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("ws") / "pattern"
    run_sft(load_config(SFTConfig, ws.BASE_CONFIG, [*TINY, "data.level=pattern"]), run_dir)
    return run_dir


def test_goal_metrics_are_rates_and_no_tool_picks_an_option(tiny_run):
    from mapo.policy import load_policy
    from mapo.agent.protocol import DEFAULT_CONFIG

    policy = load_policy(tiny_run / "final")
    samples = ws.heldout("pattern", 2)
    letters = ws.no_tool_choices(policy, samples, DEFAULT_CONFIG)
    assert all(letter in "ABCD"[: len(s.options)] for letter, s in zip(letters, samples))
    goals = ws.evaluate_goals(policy, samples, max_turns=2)
    assert goals["n"] == 2.0 and goals["chance"] == 0.25
    # the no-tool accuracy is the share of the likelihood choices above that are right
    assert goals["accuracy_no_tool"] == np.mean([c == s.answer for c, s in zip(letters, samples)])
    for key in ("first_zoom_hit", "accuracy_tool", "tool_use_rate"):
        assert goals[key] in (0.0, 0.5, 1.0)  # a share of 2 samples
    assert goals["described_crops"] <= 2 * 2  # at most one crop per turn, 2 turns per sample
    if goals["described_crops"] == 0:  # nothing described: no description rate is defined
        assert goals["description_detail"] is None and goals["description_object"] == 0.0
    assert ws.evaluate_goals(policy, ws.heldout("easy", 2), max_turns=2)["description_detail"] is None  # no details


def test_asked_details_are_parsed_from_descriptions():
    assert [d.strip() for d in ws._DETAIL.findall("a red circle with the letter K in cyan")] == ["in cyan"]
    two = "a red circle with the letter K and checks and a blue square with the letter P and no pattern"
    assert [d.strip() for d in ws._DETAIL.findall(two)] == ["and checks", "and no pattern"]
    assert [d.strip() for d in ws._DETAIL.findall("a red circle with the letter K and a blue square")] == [""]
    assert ws.description_matches("a red circle with the letter K in pink", "a red circle with the letter K in cyan") == (
        True, True,  # objects and letters only: the detail is scored separately
    )


def test_letter_diagnosis_finds_three_letters_per_transcript(tiny_run, tiny_pattern_run):
    """Every transcript yields a description glyph, a thought glyph and an answer; an untrained
    policy sits near the no-context reference NLLs."""
    out = ws.letter_diagnosis(tiny_run, n=4)
    assert json.loads((tiny_run / "letters.json").read_text()) == out
    for key in ("description_glyph_nll", "thought_glyph_nll", "answer_nll"):
        assert out[key] > 0.5, out
    assert 0.0 < out["description_glyph_mass_on_options"] < 1.0
    assert out["uniform_glyph_nll"] == pytest.approx(3.0445, abs=1e-3)
    with pytest.raises(ValueError, match="not the letter"):
        ws.letter_diagnosis(tiny_pattern_run, n=4)  # a pattern transcript carries no thought glyph


def test_word_diagnosis_scores_the_asked_word_twice_and_the_answer(tiny_run, tiny_pattern_run):
    out = ws.word_diagnosis(tiny_pattern_run, n=2)
    assert json.loads((tiny_pattern_run / "words.json").read_text()) == out
    assert out["n"] == 2.0 and out["tokens_per_word"] >= 1.0
    for key in ("description_word_nll", "thought_word_nll", "answer_nll"):
        assert out[key] > 0.1, out  # two SFT steps have not learned the words
    with pytest.raises(ValueError, match="letter level"):
        ws.word_diagnosis(tiny_run, n=2)


def test_context_effects_measure_how_much_a_prompt_word_moves_a_prediction(tiny_run):
    out = ws.context_effects(tiny_run, n=2)
    assert json.loads((tiny_run / "context_effects.json").read_text()) == out
    assert out["n"] == 2.0
    assert out["question_colour_effect"] >= 0.0 and out["hint_letter_effect"] >= 0.0
    assert out["question_colour_effect"] > 0.0  # even an untrained model's prediction moves a little


def test_sweep_table_has_a_row_per_finished_run(tiny_run):
    table = ws.sweep_table(tiny_run.parent)
    assert "| run | checkpoint |" in table and "stopped" not in table
    assert "| run |" in table and "steps=2" in table


def test_goal_files_are_read_back_with_their_level_and_step():
    order = ws._goals_order
    assert order(Path("goals_easy.json")) == ("easy", 1 << 30)  # final sorts after every checkpoint
    assert order(Path("goals_pattern_distractors.json")) == ("pattern_distractors", 1 << 30)
    assert order(Path("goals_pattern_distractors_step250.json")) == ("pattern_distractors", 250)


def test_evaluate_goals_refuses_no_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        ws.evaluate_goals(None, [])
