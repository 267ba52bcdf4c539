"""``mapo eval`` on the synthetic task with the tiny random policy (oracle turns forced for some samples)."""

from __future__ import annotations

import json

import pytest

from mapo.cli import main
from mapo.data import synth
from mapo.data.oracle import oracle_trajectory
from mapo.eval import EvalConfig, evaluate, load_eval_samples
from mapo.metrics.records import read_jsonl
from mapo.report import build_report
from mapo.engine.rollout import RolloutConfig
from mapo.data.task import tool_config_for

LEVEL = synth.level_config("easy")
TOOL = tool_config_for(LEVEL)
DATA = "synth:4:easy:7"


@pytest.fixture(scope="module")
def verifier(tiny_clip, tmp_path_factory):
    """A randomly initialised tiny CLIP saved and loaded like a real one (scores are meaningless but real)."""
    from mapo.verifier.clip import load_verifier

    path = tiny_clip(tmp_path_factory.mktemp("clip"), ["a red square with the letter k", "grey background"],
                     vision_width=32, vision_layers=1, text_width=32, text_layers=1, heads=2, projection_dim=16,
                     image_size=32, patch_size=16)
    return load_verifier(path)


def oracle_for_even(sample, turn):
    """Samples with an even index follow the oracle (valid zooms, right answer); odd ones are sampled."""
    if sample.meta["index"] % 2:
        return None
    texts = oracle_trajectory(sample, rng_or_seed=0).assistant_texts
    return texts[turn] if turn < len(texts) else None


CONFIG = EvalConfig(rollout=RolloutConfig(group_size=1, greedy=True, batch_size=4, max_turns=4,
                                          max_new_tokens_per_turn=96))


@pytest.fixture(scope="module")
def eval_dir(policy, verifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = evaluate(DATA, out, policy=policy, verifier=verifier, config=CONFIG, forced_turns=oracle_for_even)
    assert result.evaluated == 4
    return out


def test_records_hold_the_oracle_zooms_and_their_crops(eval_dir):
    records = read_jsonl(eval_dir / "predictions.jsonl").records
    assert [r.id for r in records] == [s.id for s in load_eval_samples(DATA)[0]]
    for r in records[0::2]:  # oracle-forced: correct, every zoom valid, crops on disk, IoU with the target
        assert r.correct and r.finish_reason == "answer"
        calls = [t for t in r.turns if t.tool_call]
        assert calls and all(t.valid for t in calls)
        assert all((eval_dir / t.crop).is_file() for t in calls)
        assert all(-1.0 <= t.semantic_score <= 1.0 for t in calls)
        assert r.iou and max(r.iou) > 0.3
        assert (eval_dir / r.image).is_file()
    for r in records[1::2]:  # the random model rarely answers; whatever it did is recorded
        assert r.finish_reason in ("answer", "no_tool_call", "max_new_tokens", "max_turns", "max_tokens", "max_images")
        if r.prediction is None:
            assert not r.correct


def test_metrics_agree_with_the_records(eval_dir):
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    records = read_jsonl(eval_dir / "predictions.jsonl").records
    assert metrics["benchmark"] == "synth"
    assert metrics["official"]["n"] == 4
    assert metrics["official"]["overall"] == pytest.approx(sum(r.correct for r in records) / 4)
    assert set(metrics["official"]["per_category"]) <= {"direct_attributes", "relative_position"}
    assert metrics["tools"]["n"] == 4 and metrics["broken_rows"] == 0
    ious = [v for r in records for v in r.iou]
    assert ious, "the oracle's zooms must give crops with target boxes"
    assert metrics["tools"]["crop_hit_rate"] == pytest.approx(sum(v >= 0.5 for v in ious) / len(ious))


def test_resume_skips_finished_samples_and_redoes_a_cut_line(eval_dir, policy, verifier):
    path = eval_dir / "predictions.jsonl"
    again = evaluate(DATA, eval_dir, policy=policy, verifier=verifier, config=CONFIG, forced_turns=oracle_for_even)
    assert again.evaluated == 0
    raw = path.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(raw[: last_start + 30])  # killed while writing the 4th record
    again = evaluate(DATA, eval_dir, policy=policy, verifier=verifier, config=CONFIG, forced_turns=oracle_for_even)
    assert again.evaluated == 1
    result = read_jsonl(path)
    assert len(result) == 4 and result.truncated_line is None


def test_broken_rows_are_counted(policy, tmp_path):
    from mapo.data.benchmarks import write_samples

    samples = synth.generate(3, seed=5, config=LEVEL)
    tsv = write_samples(samples, tmp_path / "data", ["hrbench"])["hrbench"]
    lines = tsv.read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\tbroken"  # a row with missing columns
    tsv.write_text("\n".join(lines) + "\n")
    config = dataclass_replace(CONFIG, benchmark="hrbench")
    result = evaluate(str(tsv), tmp_path / "eval", policy=policy, config=config)
    assert result.metrics["broken_rows"] == 1
    assert result.metrics["official"]["n"] == 2
    assert result.metrics["data"]["issues"]


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_the_report_of_an_eval_run(eval_dir, tmp_path):
    text = build_report(eval_dir, tmp_path / "report").read_text()
    assert text.count('<article class="card"') == 4


def test_cli_errors(tmp_path, capsys):
    assert main(["eval", "--data", "synth:2"]) == 2
    assert "--model, --out required" in capsys.readouterr().err
    assert main(["eval", "--data", "synth:2", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert main(["eval", "--show-config"]) == 0
    assert "preset" in capsys.readouterr().out


def test_config_rejects_groups():
    with pytest.raises(ValueError, match="group_size must be 1"):
        EvalConfig(rollout=RolloutConfig(group_size=4))


def test_bad_synth_spec_is_explained():
    with pytest.raises(ValueError, match=r"synth:N\[:LEVEL\[:SEED\]\], LEVEL one of easy, "):
        load_eval_samples("synth:many")


def test_partial_rollout_overrides_keep_eval_defaults():
    from mapo.cli.eval import _load_config

    c, _ = _load_config(None, ["rollout.tool.view_max_pixels=1003520", "rollout.batch_size=3"])
    assert (c.rollout.group_size, c.rollout.greedy, c.rollout.batch_size) == (1, True, 3)
    assert c.rollout.tool.view_max_pixels == 1003520


def test_eval_prompts_a_policy_as_it_was_trained(policy, tmp_path):
    """A policy's recorded protocol replaces the default one; an explicitly configured one wins."""
    import dataclasses

    from mapo.agent.protocol import ProtocolConfig

    short = ProtocolConfig(system_template="You can zoom in on the image with $tool_name.")
    trained = dataclasses.replace(policy, protocol=short)
    cfg = EvalConfig(rollout=RolloutConfig(group_size=1, greedy=True, batch_size=2, max_turns=1, max_new_tokens_per_turn=4))
    used = evaluate("synth:2:easy:7", tmp_path / "a", policy=trained, config=cfg).metrics["run"]["protocol"]
    assert used["system_template"] == short.system_template
    explicit = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, protocol=ProtocolConfig(system_template="Zoom: $tool_name")))
    used = evaluate("synth:2:easy:7", tmp_path / "b", policy=trained, config=explicit).metrics["run"]["protocol"]
    assert used["system_template"] == "Zoom: $tool_name"
