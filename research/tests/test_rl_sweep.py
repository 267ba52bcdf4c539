"""research/rl_sweep.py: the paired before/after figures and a variant's learning curve, on records made by hand."""

import json

import pytest

import rl_sweep


def _record(sample_id: str, correct: bool, hit: bool) -> str:
    return json.dumps({
        "id": sample_id, "source": "synth", "question": "q", "answer": "A", "prediction": "A" if correct else "B",
        "correct": correct, "finish_reason": "answer", "iou": [0.9 if hit else 0.1], "category": None, "options": [],
        "image": None, "image_size": [448, 448], "view_size": [112, 112], "target_boxes": [], "turns": [], "meta": {},
    })


def _write_eval(folder, outcomes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "predictions.jsonl").write_text("".join(_record(f"s{i}", c, h) + "\n" for i, (c, h) in enumerate(outcomes)))


def test_paired_difference_and_interval():
    before = {"a": (False, False), "b": (True, True), "c": (False, False), "d": (True, False)}
    after = {"a": (True, True), "b": (True, True), "c": (False, True), "d": (True, False)}
    b, a, diff, half = rl_sweep.paired(before, after, 1)  # hits: 1/4 -> 3/4, per-sample d = 1, 0, 1, 0
    assert (b, a, diff) == (0.25, 0.75, 0.5)
    assert half == pytest.approx(1.96 * (1 / 3) ** 0.5 / 2)
    with pytest.raises(ValueError, match="share no sample"):
        rl_sweep.paired({"a": (True, True)}, {"z": (True, True)}, 0)


def test_curve_evaluates_every_kept_checkpoint(tmp_path, monkeypatch):
    root, name = tmp_path, "v"
    (root / "overrides").mkdir()
    (root / "overrides" / f"{name}.json").write_text(json.dumps({"level": "lvl", "n": 4, "overrides": [], "policy": "p"}))
    _write_eval(root / "start_lvl_4", [(False, False)] * 4)
    for step in (10, 20):
        (root / name / "checkpoints" / f"step_{step:06d}" / "model").mkdir(parents=True)
    rows = [{"step": s, "time_step": 1.0, "hit_rate": s / 100, "accuracy": 0.5} for s in range(1, 21)]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Checkpoint 10 finds the object in 1 of 4 samples, checkpoint 20 in 2 (and answers those right).
    results = {"step_000010": [(True, True)] + [(False, False)] * 3, "step_000020": [(True, True)] * 2 + [(False, False)] * 2}
    evaluated = []

    def fake_evaluate(policy_dir, data, out):
        evaluated.append(policy_dir)
        _write_eval(out, results[out.name.removeprefix("eval_")])

    monkeypatch.setattr(rl_sweep, "heldout_dir", lambda *a: tmp_path / "data")
    monkeypatch.setattr(rl_sweep, "evaluate_policy", fake_evaluate)
    lines = rl_sweep.curve(root, name).splitlines()
    assert evaluated == [str(root / name / "checkpoints" / s / "model") for s in ("step_000010", "step_000020")]
    assert lines[4].startswith("| 10 | 0.000 → 0.250 | +0.250") and "| 0.000 → 0.250 |" in lines[4]
    assert lines[5].startswith("| 20 | 0.000 → 0.500 | +0.500")
    # sampled hit: the mean of steps 11..20's hit_rate (0.11 .. 0.20)
    assert lines[5].endswith("| 0.155 | 0.500 |")


def test_test_table_pairs_each_seed_with_the_start_and_the_first_variant(tmp_path, monkeypatch):
    roots = [tmp_path / "s0", tmp_path / "s1"]
    (roots[0] / "overrides").mkdir(parents=True)
    (roots[0] / "overrides" / "base.json").write_text(json.dumps({"level": "lvl", "n": 200, "overrides": [], "policy": "p"}))
    for seed, root in enumerate(roots):
        for name in ("base", "other"):
            (root / name / "final").mkdir(parents=True)
            (root / name / "config.yaml").write_text(f"seed: {seed}\n")
    # 4 test samples: the start finds 1; base finds 1 (seed 0) or 2 (seed 1); other finds 3 in both seeds.
    results = {"start": [(True, True)] + [(False, False)] * 3,
               "base": {0: [(True, True)] + [(False, False)] * 3, 1: [(True, True)] * 2 + [(False, False)] * 2},
               "other": {0: [(True, True)] * 3 + [(False, False)], 1: [(True, True)] * 3 + [(False, False)]}}
    seen_sets = []

    def fake_heldout(root, level, synth, n, seed=None, name=None):
        seen_sets.append((level, n, seed, name))
        return tmp_path / "test"

    def fake_evaluate(policy_dir, data, out):
        if policy_dir == "p":
            _write_eval(out, results["start"])
        else:
            run = out.parent
            _write_eval(out, results[run.name][roots.index(run.parent)])

    monkeypatch.setattr(rl_sweep, "heldout_dir", fake_heldout)
    monkeypatch.setattr(rl_sweep, "evaluate_policy", fake_evaluate)
    text = rl_sweep.test_table(["base", "other"], roots, n=4)
    assert seen_sets == [("lvl", 4, rl_sweep.TEST_SEED, "test")]  # the test seed, never the validation one
    assert "| `base` | 1 | 0.500 | +0.250 ± " in text and "| `other` | 0 | 0.750 | +0.500 ± " in text
    assert "| `other` | 0 | +0.500 ± " in text and "| `other` | 1 | +0.250 ± " in text  # other − base, per seed
