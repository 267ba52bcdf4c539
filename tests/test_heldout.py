"""mapo.metrics.heldout: crop IoU and first-zoom hit by hand, the standard metric set, and the recipes reading it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mapo.algo import crop_iou as Z
from mapo.metrics import heldout as H
from mapo.metrics.records import PredictionRecord, record_statistics
from mapo.algo.reward import RewardBreakdown
from mapo.agent.episode import ExecutedCall

TARGET = (0.0, 0.0, 10.0, 10.0)


def zoom(box=TARGET):
    return ExecutedCall(box, box, box, "red square", True, None)


def error_call():
    return ExecutedCall((0.0, 0.0, 10.0, 10.0), None, None, None, False, "box too small")


def rotate():
    # Valid, but a rotation selects no region: no box anywhere.
    return ExecutedCall(None, None, None, None, True, None, tool="image_rotate_tool", args={"angle": 90})


def traj(calls, *, targets=(TARGET,), turns=1, finish="answer", errors=(), answer="A", truth="A"):
    sample = SimpleNamespace(target_boxes=[SimpleNamespace(xyxy=b) for b in targets], options=["red", "blue"],
                             answer=truth)
    return SimpleNamespace(
        sample=sample, tool_calls=list(calls), num_observations=len(calls), finish_reason=finish,
        turns=[SimpleNamespace(errors=tuple(errors))] + [SimpleNamespace(errors=())] * (turns - 1),
        num_generated=10, answer_text=answer, used_tool=any(c.valid for c in calls),
    )


def test_crop_ious_skip_errors_and_region_less_tools():
    # error call (no region), then (0,0,10,20) vs the target: 100 / 200 = 0.5, then rotate (no region), then the target
    t = traj([error_call(), zoom((0.0, 0.0, 10.0, 20.0)), rotate(), zoom()])
    assert Z.crop_ious(t) == [0.5, 1.0]
    assert Z.first_zoom_hit(Z.crop_ious(t))  # the first *region* is the 0.5 crop, not the error call: a hit at 0.5
    assert not Z.first_zoom_hit(Z.crop_ious(t), hit_iou=0.6)


def test_crop_ious_best_target_and_no_targets():
    # (5,0,15,10) vs (0,0,10,10): 50 / 150 = 1/3; vs (5,0,15,10) itself: 1
    t = traj([zoom((5.0, 0.0, 15.0, 10.0))], targets=(TARGET, (5.0, 0.0, 15.0, 10.0)))
    assert Z.crop_ious(t) == [1.0]
    untargeted = traj([zoom(), rotate()], targets=())
    assert Z.crop_ious(untargeted) == []
    assert Z.crop_ious(untargeted, untargeted_iou=0.0) == [0.0]  # one region call, IoU 0
    assert not Z.first_zoom_hit([]) and not Z.first_zoom_hit(Z.crop_ious(traj([rotate(), error_call()])))


def test_zoom_summary_by_hand():
    s = Z.zoom_summary([[1.0], [0.2, 0.6], []])
    assert s.iou_mean == pytest.approx(1.8 / 3)  # (1.0 + 0.2 + 0.6) / 3
    assert s.crop_hit_rate == pytest.approx(2 / 3)  # 1.0 and 0.6
    assert s.first_zoom_hit_rate == pytest.approx(1 / 3)  # only the first sample's first crop hits
    assert s.ious == (1.0, 0.2, 0.6) and s.samples == 3
    empty = Z.zoom_summary([])
    assert empty.iou_mean is None and empty.crop_hit_rate is None and empty.first_zoom_hit_rate is None


def test_zoom_metrics_untargeted_conventions():
    hit, untargeted = traj([zoom()]), traj([zoom(), zoom()], targets=())
    # RL and eval: the untargeted sample leaves both numbers
    assert H.zoom_metrics([hit, untargeted]) == {"iou_mean": 1.0, "hit_rate": 1.0}
    # SFT: it counts, two crops at IoU 0 and a miss: iou (1 + 0 + 0) / 3, hit 1 / 2
    m = H.zoom_metrics([hit, untargeted], untargeted_iou=0.0)
    assert m["iou_mean"] == pytest.approx(1 / 3) and m["hit_rate"] == 0.5
    assert H.zoom_metrics([untargeted]) == {}
    assert H.zoom_metrics([traj([error_call()])]) == {"iou_mean": 0.0, "hit_rate": 0.0}  # targets, no crop


def test_trajectory_metrics_by_hand():
    trajectories = [
        traj([zoom((0.0, 0.0, 10.0, 20.0)), zoom()], turns=3),  # first crop IoU 0.5 -> hit
        traj([error_call()], turns=2, errors=("tool_call_json",)),
        traj([], turns=1, finish="no_tool_call"),
    ]
    rewards = [RewardBreakdown(2.0, 1.0, 0.0, 1.0), RewardBreakdown(-0.2, 0.0, -1.0, 0.0), RewardBreakdown(0.0, 0.0, 0.0, 0.0)]
    m = H.trajectory_metrics(trajectories, rewards)
    assert m["reward_mean"] == pytest.approx(0.6)
    assert m["reward_std"] == pytest.approx(((1.4**2 + 0.8**2 + 0.6**2) / 3) ** 0.5)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["tool_call_rate"] == pytest.approx(2 / 3) and m["invalid_call_rate"] == pytest.approx(1 / 3)
    assert m["turns_mean"] == pytest.approx(2.0) and m["format_error_rate"] == pytest.approx(1 / 3)
    assert m["iou_mean"] == pytest.approx((0.5 + 1.0) / 2)  # valid crops only
    assert m["hit_rate"] == pytest.approx(1 / 3)  # first valid crop IoU >= 0.5, over all three
    assert "iou_mean" not in H.trajectory_metrics([traj([zoom()], targets=())], rewards[:1])


def test_call_metrics_by_hand():
    trajectories = [
        traj([error_call(), zoom()], errors=("tool_call_json",), turns=2),  # 1 of 2 calls valid; right letter
        traj([rotate()], answer="B"),  # a valid call: tool used; wrong letter
        traj([], answer=None),  # no answer: wrong
    ]
    m = H.call_metrics(trajectories)
    assert m["valid_call_rate"] == pytest.approx(2 / 3)
    assert m["tool_use_rate"] == pytest.approx(2 / 3)
    assert m["format_error_turns"] == 1.0 and m["n"] == 3.0
    assert m["letter_accuracy"] == pytest.approx(1 / 3)
    assert H.call_metrics([traj([])])["valid_call_rate"] == 0.0


def test_record_statistics_use_the_same_definition():
    """Records written by ``mapo eval`` reduce to what the trajectories give (records carry crop_ious)."""
    trajectories = [traj([error_call(), zoom((0.0, 0.0, 10.0, 20.0)), rotate()]), traj([zoom((20.0, 20.0, 30.0, 30.0))]),
                    traj([zoom()], targets=())]
    records = [
        PredictionRecord(id=str(i), source="s", question="q", answer="A", prediction="A", correct=True,
                         finish_reason="answer", target_boxes=[list(b.xyxy) for b in t.sample.target_boxes],
                         iou=Z.crop_ious(t))
        for i, t in enumerate(trajectories)
    ]
    stats = record_statistics(records)
    assert stats["crop_iou_mean"] == pytest.approx(0.25)  # crops 0.5 and 0 (the untargeted sample leaves)
    assert stats["first_crop_hit_rate"] == 0.5 and stats["crop_hit_rate"] == 0.5
    assert H.zoom_metrics(trajectories) == {"iou_mean": stats["crop_iou_mean"], "hit_rate": stats["first_crop_hit_rate"]}


FAKE = {"reward_mean": 1.5, "accuracy": 0.75, "hit_rate": 0.5, "iou_mean": 0.25, "tool_call_rate": 1.0,
        "invalid_call_rate": 0.125, "turns_mean": 2.0, "answer_rate": 1.0, "letter_accuracy": 0.625,
        "valid_call_rate": 0.875, "tool_use_rate": 0.9, "format_error_turns": 3.0, "n": 8.0,
        "reward_std": 0.1, "response_tokens_mean": 50.0}


def test_rl_and_sft_held_out_rows_come_from_the_evaluator(monkeypatch):
    from mapo.train import rl_eval, sft_metrics

    seen = []

    def fake_evaluate(samples, policy, rollout_cfg, **kwargs):
        seen.append((rollout_cfg, kwargs))
        return H.Evaluation([], dict(FAKE))

    monkeypatch.setattr(H, "evaluate", fake_evaluate)
    run = SimpleNamespace(
        data=SimpleNamespace(heldout=["s"]), policy=None, rollout_cfg="rc", verifier=None,
        cfg=SimpleNamespace(reward="reward", semantic_target="description", verifier_batch_size=4),
    )
    assert rl_eval.evaluate(run) == {
        "eval/reward_mean": 1.5, "eval/accuracy": 0.75, "eval/hit_rate": 0.5, "eval/iou_mean": 0.25,
        "eval/tool_call_rate": 1.0, "eval/invalid_call_rate": 0.125, "eval/turns_mean": 2.0, "eval/answer_rate": 1.0,
        "eval/n": 8.0,
    }
    assert seen[-1] == ("rc", {"reward": "reward", "verifier": None, "semantic_target": "description",
                               "verifier_batch_size": 4})

    from mapo.data.synth import generate
    from mapo.train.sft import SFTConfig

    cfg = SFTConfig()
    assert sft_metrics.rollout_eval(None, cfg, generate(1, seed=3)) == {
        "heldout/accuracy": 0.625, "heldout/valid_call_rate": 0.875, "heldout/mean_iou": 0.25,
        "heldout/first_zoom_hit@0.5": 0.5, "heldout/tool_use_rate": 0.9, "heldout/turns_per_trajectory": 2.0,
        "heldout/format_error_turns": 3.0, "heldout/n": 8.0,
    }
    rc, kwargs = seen[-1]
    assert kwargs == {"untargeted_iou": 0.0} and rc.group_size == 1 and rc.greedy
    assert rc.max_turns == cfg.eval.max_turns and rc.protocol == cfg.protocol


def test_greedy_config_one_greedy_trajectory_per_sample():
    from mapo.engine.rollout import RolloutConfig

    rc = H.greedy_config(RolloutConfig(group_size=4, batch_size=32, temperature=0.7), 5)
    assert (rc.group_size, rc.greedy, rc.batch_size, rc.temperature) == (1, True, 5, 0.7)
    assert H.greedy_config(RolloutConfig(batch_size=2), 5).batch_size == 2


def test_evaluate_plays_greedy_and_reports_the_standard_set(policy):
    from mapo.data.synth import generate
    from mapo.data.task import tool_config_for
    from mapo.algo.reward import RewardConfig, outcome_reward
    from mapo.engine.rollout import RolloutConfig

    samples = generate(2, seed=5)
    rc = RolloutConfig(group_size=3, max_turns=2, max_new_tokens_per_turn=8, tool=tool_config_for(samples[0]))
    result = H.evaluate(samples, policy, rc, untargeted_iou=0.0)
    assert [t.sample.id for t in result.trajectories] == [s.id for s in samples]  # G = 1, sample order
    rewards = [outcome_reward(t, RewardConfig()) for t in result.trajectories]
    expected = H.trajectory_metrics(result.trajectories, rewards, untargeted_iou=0.0) | H.call_metrics(result.trajectories)
    assert result.metrics == expected and result.metrics["n"] == 2.0
    again = H.evaluate(samples, policy, rc, untargeted_iou=0.0)  # greedy: the same trajectories
    assert [t.assistant_texts for t in again.trajectories] == [t.assistant_texts for t in result.trajectories]
    with pytest.raises(ValueError, match="at least one sample"):
        H.evaluate([], policy, rc)


def test_found_and_recovered_by_hand():
    # per-sample crop IoUs: hit first; miss then hit (recovered); miss, miss; no crop; one miss
    rows = [[0.9, 0.1], [0.2, 0.6], [0.1, 0.3], [], [0.4]]
    assert [Z.found(r) for r in rows] == [True, True, False, False, False]
    assert [Z.recovered(r) for r in rows] == [False, True, False, False, False]
    s = Z.zoom_summary(rows)
    assert s.found_rate == pytest.approx(2 / 5) and s.recovered_rate == pytest.approx(1 / 5)
    assert s.first_zoom_hit_rate == pytest.approx(1 / 5)  # found = first-zoom hit + recovered
    assert s.recovered_after_miss_rate == pytest.approx(1 / 3)  # 3 samples have a first crop that missed
    assert s.crop_hit_rate == pytest.approx(2 / 7)  # 0.9 and 0.6 of 7 crops
    assert Z.zoom_summary([[0.9]]).recovered_after_miss_rate is None  # no first miss: undefined


def test_search_metrics_of_trajectories_and_records_agree():
    trajectories = [
        traj([zoom((20.0, 20.0, 30.0, 30.0)), error_call(), zoom()]),  # miss, error, hit: recovered
        traj([zoom()]),  # hit first
        traj([error_call()]),  # no crop: not found
        traj([zoom()], targets=()),  # no target box: not counted
    ]
    m = H.search_metrics(trajectories)
    assert m == {"crop_hit_rate": pytest.approx(2 / 3), "found_rate": pytest.approx(2 / 3),
                 "recovered_rate": pytest.approx(1 / 3), "recovered_after_miss_rate": 1.0}
    rewards = [RewardBreakdown(0.0, 0.0, 0.0, 0.0)] * 4
    assert {k: H.trajectory_metrics(trajectories, rewards)[k] for k in m} == m
    assert H.search_metrics(trajectories[3:]) == {}
    records = [
        PredictionRecord(id=str(i), source="s", question="q", answer="A", prediction="A", correct=True,
                         finish_reason="answer", target_boxes=[list(b.xyxy) for b in t.sample.target_boxes],
                         iou=Z.crop_ious(t))
        for i, t in enumerate(trajectories)
    ]
    stats = record_statistics(records)
    assert stats["found_rate"] == m["found_rate"] and stats["recovered_rate"] == m["recovered_rate"]
