from __future__ import annotations

import numpy as np
import pytest

from mapo.agent import protocol, tools
from mapo.data import Sample
from mapo.data.oracle import oracle_trajectory
from mapo.data.task import tool_config_for
from mapo.data.synth import caption_for_crop, generate


def _check_well_formed(sample, traj):
    turns = [protocol.parse_turn(t) for t in traj.assistant_texts]
    assert all(t.errors == () for t in turns), [t.errors for t in turns]
    assert [t.action for t in turns] == ["tool_call"] * (len(turns) - 1) + ["answer"]
    assert turns[-1].answer == sample.answer
    assert turns[0].description is None and all(t.description for t in turns[1:])
    # Each description is the ground-truth caption of the crop the tool actually returned.
    assert [t.description for t in turns[1:]] == traj.descriptions
    assert [t.tool_call.bbox for t in turns[:-1]] == [tuple(map(float, b)) for b in traj.boxes_view]
    roles = [m["role"] for m in traj.messages]
    assert roles[:2] == ["system", "user"] and roles[2::2] == ["assistant"] * len(turns)
    n_image_slots = sum(c.get("type") == "image" for m in traj.messages for c in m["content"])
    assert n_image_slots == len(traj.images) == len(traj.boxes_view) + 1


@pytest.mark.parametrize("level", ["easy", "medium", "hard"])
def test_clean_oracle_zooms_on_each_target(level):
    for sample in generate(8, 0, level):
        traj = oracle_trajectory(sample, rng_or_seed=0)
        _check_well_formed(sample, traj)
        assert len(traj.boxes_view) == len(sample.target_boxes)
        for target, desc in zip(sample.target_boxes, traj.descriptions):
            assert target.caption in desc
        assert all(isinstance(v, int) for b in traj.boxes_view for v in b)


def test_wrong_first_zoom_then_recovery():
    for sample in generate(6, 1, "medium"):
        traj = oracle_trajectory(sample, rng_or_seed=5, wrong_first_zoom=1.0)
        _check_well_formed(sample, traj)
        target = sample.target_boxes[0]
        assert target.caption not in traj.descriptions[0]  # the first look misses
        assert target.caption in traj.descriptions[-1]
        assert "not here" in traj.assistant_texts[1]


def test_search_visits_distinct_distractors_then_the_target():
    from collections import Counter

    misses = Counter()
    samples = generate(40, 2, "pattern_distractors")
    for i, sample in enumerate(samples):
        traj = oracle_trajectory(sample, rng_or_seed=i, search_misses=2, option_scan=True)
        _check_well_formed(sample, traj)
        target = sample.target_boxes[0]
        k = len(traj.boxes_view) - 1
        misses[k] += 1
        assert k <= 2 and len(set(traj.boxes_view)) == k + 1  # never the same place twice
        assert all(target.caption not in d for d in traj.descriptions[:k])  # each miss says what is there
        assert all(d != "empty background" for d in traj.descriptions)  # it visits objects, not empty cells
        assert target.caption in traj.descriptions[-1]
        assert all("not here" in traj.assistant_texts[j] for j in range(1, k + 1))
    # The target's place in a random order of 3-6 objects, capped at 2: P(0 misses) = mean(1/n) = 0.24.
    assert set(misses) == {0, 1, 2} and 4 <= misses[0] <= 18


def test_search_off_keeps_the_random_stream():
    sample = generate(1, 3, "pattern_distractors")[0]
    a = oracle_trajectory(sample, rng_or_seed=9, wrong_first_zoom=0.5, jitter=0.2)
    b = oracle_trajectory(sample, rng_or_seed=9, wrong_first_zoom=0.5, jitter=0.2, search_misses=0)
    assert a.assistant_texts == b.assistant_texts


def test_jitter_is_controllable_and_misses_are_corrected():
    sample = generate(1, 0, "easy")[0]
    clean = oracle_trajectory(sample, rng_or_seed=0).boxes_view
    moved, recovered = 0, 0
    for seed in range(30):
        traj = oracle_trajectory(sample, rng_or_seed=seed, jitter=0.8)
        _check_well_formed(sample, traj)
        moved += traj.boxes_view[0] != clean[0]
        recovered += len(traj.boxes_view) == 2
        assert sample.target_boxes[0].caption in traj.descriptions[-1]  # it always ends on the target
    assert moved >= 25 and recovered >= 1


def test_oracle_is_deterministic_and_crops_match_the_tool():
    sample = generate(1, 7, "hard")[0]
    a = oracle_trajectory(sample, rng_or_seed=11, jitter=0.2, wrong_first_zoom=0.5)
    b = oracle_trajectory(sample, rng_or_seed=np.random.default_rng(11), jitter=0.2, wrong_first_zoom=0.5)
    assert a.assistant_texts == b.assistant_texts
    tc = tool_config_for(sample)
    image = sample.load_image()
    assert a.images[0].size == image.size  # the global image is the original; the processor resizes it
    for crop, box in zip(a.images[1:], a.boxes_view):
        again = tools.zoom_in(image, box, None, tc)
        assert np.array_equal(np.asarray(again.crop), np.asarray(crop))
        assert caption_for_crop(sample, again.box_original) in a.descriptions


def test_oracle_rejects_samples_without_targets():
    s = Sample(id="x", image=b"", question="q")
    with pytest.raises(ValueError, match="target boxes"):
        oracle_trajectory(s, rng_or_seed=0)


def test_option_scan_goes_through_the_options_up_to_the_answer():
    from mapo.data.oracle import option_scan_text

    assert option_scan_text(["bands", "no pattern", "checks"], "B") == "(A) bands: no. (B) no pattern: yes."
    assert option_scan_text(["bands", "checks"], "A") == "(A) bands: yes."
    sample = generate(1, 5, "pattern")[0]
    traj = oracle_trajectory(sample, rng_or_seed=0, option_scan=True)
    _check_well_formed(sample, traj)
    final = protocol.parse_turn(traj.assistant_texts[-1])
    assert final.think.endswith(option_scan_text(sample.options, sample.answer))
    plain = oracle_trajectory(sample, rng_or_seed=0)
    assert "yes." not in plain.assistant_texts[-1]


def test_view_scan_names_every_cell_and_the_place_of_the_asked_object():
    import re

    for i, sample in enumerate(generate(10, 4, "pattern_distractors")):
        traj = oracle_trajectory(sample, rng_or_seed=i, view_scan=True)
        _check_well_formed(sample, traj)
        first = traj.assistant_texts[0]
        entries = re.findall(r"\((\d+), (\d+)\) (empty|\w+ \w+)\.", first)
        assert len(entries) == 16  # every cell of the 4 x 4 grid, in reading order
        named = [label for _, _, label in entries if label != "empty"]
        assert sorted(named) == sorted(b.label for b in sample.boxes)
        # the place written next to the asked object's words is where the zoom goes
        target = sample.target_boxes[0].label
        x1, y1 = next((int(x), int(y)) for x, y, label in entries if label == target)
        assert f"The {target} is at ({x1}, {y1})." in first
        assert traj.boxes_view[0][:2] == (x1, y1) and len(traj.boxes_view) == 1
