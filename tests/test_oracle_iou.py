"""``semantic_target=oracle_iou``: s_{i,k} is the crop's IoU with the target box (by hand), no verifier is needed,
data without target boxes is refused at start, and a tiny MAPO run trains on it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mapo.algo import semantic
from mapo.data import synth
from mapo.agent.episode import ExecutedCall
from test_train import forced, rl_config
from tiny_assets import LEVEL

TARGET = (0.0, 0.0, 10.0, 10.0)


@pytest.fixture(scope="module")
def assets(tiny_policy_dir, tiny_verifier_dir):
    return tiny_policy_dir, tiny_verifier_dir


def zoom(box):
    return ExecutedCall(box, box, box, "red square", True, None)


def error_call():
    return ExecutedCall((0.0, 0.0, 10.0, 10.0), None, None, None, False, "box too small")


def traj(calls, descriptions, targets=(TARGET,), sample_id="s"):
    sample = SimpleNamespace(id=sample_id, target_boxes=[SimpleNamespace(xyxy=b) for b in targets])
    return SimpleNamespace(sample=sample, tool_calls=list(calls), num_observations=len(calls),
                           descriptions=list(descriptions), crops=[None] * len(calls))


def test_oracle_scores_are_crop_ious_by_hand_and_need_no_verifier():
    # (0,0,10,20) vs (0,0,10,10): 100 / 200 = 0.5; an error observation scores 0; (20,20,30,30) misses: 0
    a = traj([zoom((0.0, 0.0, 10.0, 20.0)), error_call(), zoom(TARGET)], ["a red square", None, "x" * 400])
    b = traj([zoom((20.0, 20.0, 30.0, 30.0))], [""])
    sem = semantic.semantic_scores([a, b], None, target="oracle_iou", max_description_chars=300)
    assert sem.scores[0].tolist() == [0.5, 0.0, 1.0]
    assert sem.scores[1, 0].item() == 0.0 and math.isnan(sem.scores[1, 1].item())  # (B, K) layout, NaN padding
    assert sem.n_pairs == 0
    assert sem.description_missing.tolist() == [[False, True, False], [True, False, False]]
    assert sem.description_too_long[0].tolist() == [False, False, True]
    assert not semantic.needs_verifier("oracle_iou") and semantic.needs_verifier("label")


def test_oracle_scores_refuse_a_sample_without_target_box():
    with pytest.raises(ValueError, match="oracle_iou needs target boxes, but sample 'nobox' has none"):
        semantic.oracle_iou_scores([traj([zoom(TARGET)], ["d"], targets=(), sample_id="nobox")])


def test_oracle_arm_needs_no_verifier_but_mapo_on_a_verifier_target_does(assets):
    cfg = rl_config((assets[0], None), semantic_target="oracle_iou", advantage=dict(estimator="mapo"))
    assert cfg.verifier is None
    with pytest.raises(ValueError, match="'mapo' needs semantic scores"):
        rl_config((assets[0], None), semantic_target="label", advantage=dict(estimator="mapo"))


def test_oracle_on_data_without_target_boxes_is_refused_in_one_line_at_start(assets, tmp_path, capsys):
    import yaml

    from mapo.cli import main
    from mapo.data.writers import write_hrbench
    from test_train import base_config

    import dataclasses

    samples = [dataclasses.replace(s, boxes=[]) for s in synth.generate(4, seed=3, config=LEVEL)]
    write_hrbench(samples, tmp_path / "hr.tsv")  # rows without boxes, as real HR-Bench
    raw = base_config(assets[0], None, semantic_target="oracle_iou", advantage=dict(estimator="mapo"),
                      data=dict(source=str(tmp_path / "hr.tsv"), n_eval=1))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "oracle_iou scores each crop by its IoU with the target box, but training" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_tiny_mapo_run_on_oracle_iou_credits_crop_ious(assets, tmp_path, monkeypatch):
    """The advantage estimator receives the IoU scores (recorded here) and the step logs them as semantic_mean."""
    from mapo.train import rl_step
    from mapo.train.metrics_log import read_metrics
    from mapo.train.rl import train

    seen = []
    real = semantic.semantic_scores

    def spy(trajectories, verifier, **kw):
        out = real(trajectories, verifier, **kw)
        seen.append((out.scores.clone(), [semantic.oracle_iou_scores(trajectories).scores]))
        return out

    monkeypatch.setattr(rl_step.semantic, "semantic_scores", spy)
    cfg = rl_config((assets[0], None), steps=1, bootstrap_every=0, semantic_target="oracle_iou",
                    advantage=dict(estimator="mapo"))
    train(cfg, tmp_path / "run", progress=False, forced_turns=forced)
    assert len(seen) == 2  # the training step, then the final held-out evaluation (no verifier needed for either)
    scores, (expected,) = seen[0]
    assert torch.equal(scores.nan_to_num(-1), expected.nan_to_num(-1))
    assert (scores[~scores.isnan()] >= 0).all() and (scores[~scores.isnan()] <= 1).all()
    row = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward_mean" in r)
    assert row["verifier_pairs"] == 0 and row["semantic_mean"] == pytest.approx(float(scores[~scores.isnan()].mean()),
                                                                                 abs=1e-6)
