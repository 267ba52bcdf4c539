"""Training rollouts saved by ``mapo train`` (mapo.train.rollout_log) and shown by ``mapo report``: the saved
per-turn advantages and scores are the ones the update used, and the report renders them escaped."""

from __future__ import annotations

import pytest
import torch

from mapo.metrics.records import read_jsonl
from test_train import forced, rl_config


@pytest.fixture(scope="module")
def assets(tiny_policy_dir, tiny_verifier_dir):
    return tiny_policy_dir, tiny_verifier_dir


def test_turn_advantages_by_hand():
    from mapo.train.rollout_log import turn_advantages

    adv = torch.tensor([0.0, 1.0, 3.0, 0.0, -2.0, 0.0])
    seg = torch.tensor([-1, 0, 0, -1, 1, -1])
    assert turn_advantages(adv, seg, 3) == [2.0, -2.0, None]  # segment 2 has no token


def test_due_steps():
    from mapo.train.rollout_log import due

    assert [s for s in range(1, 25) if due(s, 10)] == [1, 10, 20] and not any(due(s, 0) for s in range(1, 5))


@pytest.fixture(scope="module")
def mapo_run(assets, tmp_path_factory):
    """A 2-step MAPO run saving one group at each step; the advantages and scores the update received."""
    import mapo.train.rl_step as rl_step
    from mapo.algo import semantic
    from mapo.train.rl import train

    seen = {"adv": [], "scores": []}
    real_update, real_scores = rl_step.update_policy, semantic.semantic_scores

    def spy_update(run, batch, advantages):
        seen["adv"].append((advantages.clone(), batch.segment_ids.clone()))
        return real_update(run, batch, advantages)

    def spy_scores(*args, **kwargs):
        out = real_scores(*args, **kwargs)
        seen["scores"].append(out.scores.clone())
        return out

    run_dir = tmp_path_factory.mktemp("rollouts") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(rl_step, "update_policy", spy_update)
    mp.setattr(semantic, "semantic_scores", spy_scores)
    try:
        cfg = rl_config(assets, steps=2, bootstrap_every=0, save_rollouts_every=1, save_rollouts_groups=1,
                        data=dict(n_eval=0))
        train(cfg, run_dir, progress=False, forced_turns=forced)
    finally:
        mp.undo()
    return run_dir, seen


def test_saved_rollouts_carry_the_advantages_and_scores_the_update_used(mapo_run):
    run_dir, seen = mapo_run
    records = read_jsonl(run_dir / "rollouts" / "predictions.jsonl").records
    G = 2  # base_config: group_size 2; one group saved per step, the first of the step (rows 0 .. G-1)
    assert [(r.meta["train"]["step"], r.meta["train"]["member"]) for r in records] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    checked = 0
    for r in records:
        step, member = r.meta["train"]["step"], r.meta["train"]["member"]
        adv, seg = seen["adv"][step - 1]
        scores = seen["scores"][step - 1]
        row = member  # group 0 holds rows 0 .. G-1 of the batch
        assert r.meta["train"]["group"] == 0 and r.meta["train"]["estimator"] == "mapo" and row < G
        assert r.id == f"s{step}/{r.meta['train']['prompt']}/m{member}"
        for j, turn in enumerate(r.turns):
            mask = seg[row] == j
            if mask.any():
                assert turn.advantage == pytest.approx(float(adv[row][mask].double().mean()), abs=1e-7)
                checked += 1
            else:
                assert turn.advantage is None
            if j < scores.shape[1] and not torch.isnan(scores[row, j]):
                assert turn.semantic_score == pytest.approx(float(scores[row, j]), abs=1e-6)
        assert (run_dir / "rollouts" / r.image).is_file()
        assert r.image == next(o.image for o in records if o.meta["train"]["step"] == step)  # one image per group
    assert checked >= 4
    assert any(t.crop for r in records for t in r.turns)  # member 0 is forced to zoom: its crop is saved
    assert len(list((run_dir / "rollouts" / "images").iterdir())) == 2  # one per saved group


def test_report_of_a_training_run_shows_its_rollouts_by_step_and_prompt(mapo_run, tmp_path):
    from mapo.report import build_report

    run_dir, _ = mapo_run
    path = run_dir / "rollouts" / "predictions.jsonl"
    records = read_jsonl(path).records
    records[0].turns[0].description = "<script>alert(1)</script>"  # model text is text
    path.write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
    text = build_report(run_dir, tmp_path / "report").read_text()
    assert 'id="rollouts"' in text and "Training rollouts" in text
    assert text.index("step 1 · prompt") < text.index("step 2 · prompt")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert(1)" not in text
    assert "advantage" in text and "reward" in text
    assert text.count('class="card rollout"') == 4
