"""Outcome reward: hand-computed cases of R = w_acc*acc + w_fmt*fmt + w_tool*acc*used_tool."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mapo.data import Sample
from mapo.agent.protocol import parse_turn
from mapo.algo.reward import RewardConfig, answer_matches, outcome_reward, outcome_rewards

MC = Sample(id="q1", image=b"", question="What letter?", options=["S", "A", "H", "M"], answer="B")
OPEN = Sample(id="q2", image=b"", question="What colour?", answer="Dark red")


def traj(sample, texts, finish="answer", used_tool=False):
    turns = [parse_turn(t) for t in texts]
    answer = turns[-1].answer if finish == "answer" else None
    return SimpleNamespace(sample=sample, turns=turns, answer_text=answer, finish_reason=finish, used_tool=used_tool)


ZOOM = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 40, 50]}}</tool_call>'


@pytest.mark.parametrize(
    "texts, finish, used_tool, expected",
    [
        # correct, well formed, tool used: 0.8*1 + 0.2*0 + 1.2*1*1 = 2.0
        ([ZOOM, "<description>a square</description><answer>B</answer>"], "answer", True, 2.0),
        # correct, no tool: 0.8*1 + 0 + 1.2*1*0 = 0.8
        (["<answer>(B) A</answer>"], "answer", False, 0.8),
        # wrong, well formed, tool used: 0.8*0 + 0.2*0 + 1.2*0*1 = 0.0
        ([ZOOM, "<description>x</description><answer>C</answer>"], "answer", True, 0.0),
        # correct but a format error in a turn (unclosed think): 0.8 + 0.2*(-1) + 1.2 = 1.8
        ([ZOOM + "<think>hmm", "<description>x</description><answer>B</answer>"], "answer", True, 1.8),
        # never answered: 0 + 0.2*(-1) + 0 = -0.2
        ([ZOOM], "max_turns", True, -0.2),
    ],
)
def test_reward_by_hand(texts, finish, used_tool, expected):
    assert outcome_reward(traj(MC, texts, finish, used_tool)).total == pytest.approx(expected, abs=1e-12)


def test_breakdown_and_batch_tensor():
    t = traj(MC, ["<answer>B</answer>"], used_tool=False)
    r = outcome_reward(t)
    assert (r.acc, r.fmt, r.used_tool) == (1.0, 0.0, 0.0)
    custom = RewardConfig(w_acc=1.0, w_fmt=0.5, w_tool=2.0, format_ok=1.0)
    # 1*1 + 0.5*1 + 2*1*0 = 1.5
    assert outcome_reward(t, custom).total == pytest.approx(1.5)
    out = outcome_rewards([t, traj(MC, [ZOOM], "max_turns", True)])
    assert out.dtype == torch.float32 and out.tolist() == pytest.approx([0.8, -0.2])


def test_answer_matching():
    assert answer_matches("B", "B", MC.options)
    assert answer_matches("The answer is (B).", "B", MC.options)
    # A bare letter is read as a letter: "A" picks option A ("S"), not option B whose text is "A".
    assert not answer_matches("A", "B", MC.options)
    assert answer_matches("A", "A", [])  # open question: texts compared
    assert answer_matches("dark red!", "Dark red", [])
    assert not answer_matches("red", "Dark red", [])
    assert not answer_matches(None, "B", MC.options)
    assert not answer_matches("C", "B", MC.options)
    with pytest.raises(ValueError, match="must be strings"):
        answer_matches(3, "B", MC.options)


def test_overlong_answer_scores_zero_and_is_a_format_error():
    long = "<answer>B" + " maybe" * 300 + "</answer>"
    r = outcome_reward(traj(MC, [long]))
    assert r.acc == 0.0 and r.fmt == -1.0  # 0 + 0.2*(-1) + 0 = -0.2
    assert r.total == pytest.approx(-0.2)


def test_config_validation():
    with pytest.raises(ValueError, match="w_acc"):
        RewardConfig(w_acc="1")
    with pytest.raises(ValueError, match="max_answer_chars"):
        RewardConfig(max_answer_chars=0)
