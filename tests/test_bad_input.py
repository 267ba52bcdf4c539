"""One bad sample never aborts eval or training; an eval directory never merges two evaluations.

Fixtures are a few synthetic samples written as a V* folder plus hand-made bad rows:
a truncated PNG, a 1x1, a 50x50 and a 3000x10 image, and a question with 30 options.
The tiny policy's processor takes at least 112x112 pixels, so the small images need
upscaling and the thin one padding before it can see them.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mapo.cli import main
from mapo.data import synth
from mapo.data.prepare import fit_image, prepare_sample
from mapo.policy.processor import pixel_range
from mapo.data.sample import Box, Sample
from mapo.data.benchmarks import write_samples
from mapo.eval import EvalConfig, evaluate, load_eval_samples
from mapo.policy import build_tiny_policy
from mapo.metrics.records import read_jsonl
from mapo.engine.rollout import RolloutConfig
from mapo.agent.tools import ToolConfig, view_size
from mapo.data.task import tool_config_for

LEVEL = synth.level_config("easy")
TOOL = tool_config_for(LEVEL)
CONFIG = EvalConfig(rollout=RolloutConfig(group_size=1, greedy=True, batch_size=8, max_turns=1, max_new_tokens_per_turn=4),
                    tool_from_data=False, benchmark="vstar")
BAD = ("z_trunc", "z_1x1", "z_50x50", "z_3000x10", "z_30_options")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _add_row(folder: Path, name: str, raw: bytes, options=("red", "blue")) -> None:
    (folder / f"{name}.png").write_bytes(raw)
    record = {"question": "What colour?", "options": list(options), "target_object": ["x"], "bbox": [[0, 0, 1, 1]]}
    (folder / f"{name}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def bad_vstar(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "vstar"
    write_samples(synth.generate(2, seed=5, config=LEVEL), root.parent, ["vstar"])
    folder = root / "direct_attributes"
    folder.mkdir(exist_ok=True)
    whole = _png(Image.effect_noise((200, 200), 60).convert("RGB"))
    _add_row(folder, "z_trunc", whole[: len(whole) // 2])
    _add_row(folder, "z_1x1", _png(Image.new("RGB", (1, 1), "red")))
    _add_row(folder, "z_50x50", _png(Image.new("RGB", (50, 50), "red")))
    _add_row(folder, "z_3000x10", _png(Image.new("RGB", (3000, 10), "red")))
    _add_row(folder, "z_30_options", _png(Image.new("RGB", (200, 200))), options=[f"o{i}" for i in range(30)])
    return root


# ----------------------------------------------------------------------------- fitting images


@pytest.mark.parametrize("size", [(1, 1), (50, 50), (3000, 10), (10, 3000), (200, 200)])
def test_fitted_images_have_a_view_inside_the_processor_range(policy, size):
    pixels = pixel_range(policy.processor)
    assert pixels == (112 * 112, 224 * 224)
    image, _, note = fit_image(Image.new("RGB", size), ToolConfig(), pixels)
    vw, vh = view_size(image.size, ToolConfig())
    assert pixels[0] <= vw * vh <= pixels[1]
    assert (note is None) == (size == (200, 200))
    if size[0] > 10 * size[1]:
        assert image.size == (3000, 60) and note.startswith("padded 3000x10 to 3000x60")


def test_upscaled_samples_carry_their_boxes_and_padded_ones_keep_them():
    tiny = Sample("s", Image.new("RGB", (50, 50)), "q", ["a", "b"], "A", boxes=[Box(10, 10, 20, 20, is_target=True)])
    fitted = prepare_sample(tiny, ToolConfig(), (112 * 112, 224 * 224))
    assert fitted.image.size == (112, 112) and "upscaled 50x50 to 112x112" in fitted.meta["image_adjusted"]
    assert fitted.boxes[0].xyxy == pytest.approx((22.4, 22.4, 44.8, 44.8))
    thin = dataclasses.replace(tiny, image=Image.new("RGB", (3000, 10)))
    assert prepare_sample(thin, ToolConfig()).boxes[0].xyxy == (10, 10, 20, 20)
    with pytest.raises(ValueError, match="cannot be brought into the view budget"):
        prepare_sample(dataclasses.replace(tiny, image=Image.new("RGB", (100_000, 1))), ToolConfig())


# ----------------------------------------------------------------------------- eval


def test_eval_skips_reports_and_adjusts_bad_rows_and_goes_on(policy, bad_vstar, tmp_path):
    result = evaluate(str(bad_vstar), tmp_path / "e", policy=policy, config=CONFIG)
    records = {Path(r.id).name: r for r in read_jsonl(tmp_path / "e" / "predictions.jsonl")}
    assert set(records) == {"synth-easy-s5-000000", "synth-easy-s5-000001", "z_1x1", "z_50x50", "z_3000x10"}
    assert "upscaled 1x1" in records["z_1x1"].meta["image_adjusted"]
    assert "upscaled 50x50" in records["z_50x50"].meta["image_adjusted"]
    assert "padded 3000x10" in records["z_3000x10"].meta["image_adjusted"]
    assert records["z_3000x10"].image_size == [3000, 60]
    m = result.metrics
    rows = {Path(r["file"]).name: r for r in m["skipped_rows"]}
    assert set(rows) == {"z_trunc.json", "z_30_options.json"}  # V* rows are named by their annotation file
    assert m["broken_rows"] == 2 and m["official"]["n"] == 5 and m["data"]["adjusted_images"] == 3
    assert any("truncated" in r["reason"] for r in m["skipped_rows"])
    assert any("30 options" in r["reason"] for r in m["skipped_rows"])
    assert all({"file", "row", "reason"} <= set(r) for r in m["skipped_rows"])


def test_a_rollout_failing_on_one_sample_skips_only_that_sample(policy, tmp_path, monkeypatch):
    import mapo.engine.rollout

    real = mapo.engine.rollout.rollout

    def fragile(samples, *args, **kwargs):
        if any(s.id.endswith("000001") for s in samples):
            raise ValueError("image features and tokens do not match")
        return real(samples, *args, **kwargs)

    monkeypatch.setattr(mapo.engine.rollout, "rollout", fragile)
    cfg = dataclasses.replace(CONFIG, benchmark="synth")
    result = evaluate("synth:3:easy:7", tmp_path / "e", policy=policy, config=cfg)
    assert result.evaluated == 2 and result.metrics["official"]["n"] == 2
    (row,) = result.metrics["skipped_rows"]
    assert row["row"] == 1 and "features and tokens do not match" in row["reason"]


def test_cli_eval_prints_the_skipped_rows(policy, bad_vstar, tmp_path, capsys):
    policy.save(tmp_path / "model")
    out = tmp_path / "e"
    rc = main(["eval", "--data", str(bad_vstar), "--model", str(tmp_path / "model"), "--out", str(out), "--no-progress",
               "--set", "tool_from_data=false", "benchmark=vstar", "rollout.max_turns=1",
               "rollout.max_new_tokens_per_turn=4"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "skipped 2 row(s)" in err and "z_30_options.json [row 0]: 30 options" in err


# ----------------------------------------------------------------------------- the eval directory


def test_reusing_an_eval_dir_with_another_model_data_or_config_is_refused(policy, tmp_path):
    cfg = dataclasses.replace(CONFIG, benchmark="synth")
    out = tmp_path / "e"
    evaluate("synth:2:easy:7", out, policy=policy, config=cfg)
    other = build_tiny_policy("tiny", tool_config=TOOL, seed=1)
    with pytest.raises(ValueError, match=r"different model \(.*\); .*--overwrite"):
        evaluate("synth:2:easy:7", out, policy=other, config=cfg)
    with pytest.raises(ValueError, match="different data"):
        evaluate("synth:2:easy:8", out, policy=policy, config=cfg)
    longer = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, max_turns=2))
    with pytest.raises(ValueError, match="different config"):
        evaluate("synth:2:easy:7", out, policy=policy, config=longer)
    # Batching does not change what is evaluated, and more samples of the same stream extend it.
    batched = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, batch_size=1))
    assert evaluate("synth:3:easy:7", out, policy=policy, config=batched).evaluated == 1
    before = json.loads((out / "metrics.json").read_text())["run"]["fingerprint"]
    replaced = evaluate("synth:2:easy:7", out, policy=other, config=cfg, overwrite=True)
    assert replaced.evaluated == 2 and len(read_jsonl(out / "predictions.jsonl")) == 2
    assert replaced.metrics["run"]["fingerprint"]["model"] != before["model"]


def test_predictions_without_a_fingerprint_are_not_adopted(policy, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "predictions.jsonl").write_text("")
    with pytest.raises(ValueError, match="predictions without a fingerprint"):
        evaluate("synth:1:easy:7", out, policy=policy, config=dataclasses.replace(CONFIG, benchmark="synth"))


def test_data_fingerprint_follows_file_contents(tmp_path):
    from mapo.eval import data_fingerprint

    (tmp_path / "a.tsv").write_text("x")
    first = data_fingerprint(str(tmp_path / "a.tsv"))
    (tmp_path / "a.tsv").write_text("y")
    assert data_fingerprint(str(tmp_path / "a.tsv")) != first
    assert data_fingerprint("synth:5:easy:7") == data_fingerprint("synth:9:easy:7") != data_fingerprint("synth:5:hard:7")


def test_a_huge_synthetic_spec_is_bounded_not_built():
    with pytest.raises(ValueError, match="over the bound of 100000; pass --limit"):
        load_eval_samples("synth:100000000000")
    assert len(load_eval_samples("synth:100000000000", limit=2)[0]) == 2


def test_an_unwritable_out_is_one_line_not_a_traceback(policy, tmp_path, capsys):
    policy.save(tmp_path / "model")
    (tmp_path / "file").write_text("not a folder")
    capsys.readouterr()
    rc = main(["eval", "--data", "synth:1", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "file" / "e")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (after the weight-loading bar)
    assert rc == 2 and "Traceback" not in err and last.startswith("mapo eval: cannot write the eval directory")
    rc = main(["train", "--out", str(tmp_path / "file" / "r"), "policy=default", "steps=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("mapo train: ")


# ----------------------------------------------------------------------------- data check


def test_data_check_decodes_images_in_full(bad_vstar, capsys):
    assert main(["data", "check", str(bad_vstar)]) == 1
    out = capsys.readouterr().out
    assert "skipped 2" in out and "truncated" in out and "30 options" in out


# ----------------------------------------------------------------------------- training


def test_training_skips_a_sample_it_cannot_play_and_goes_on(policy, bad_vstar, tmp_path, capsys):
    from mapo.core.config import from_dict
    from mapo.train.rl import RLConfig, train
    from mapo.train.rl_run import SKIPPED_FILE

    policy.save(tmp_path / "policy")
    cfg = from_dict(RLConfig, dict(
        policy=str(tmp_path / "policy"), steps=3, prompts_per_step=2, seed=0, bootstrap_every=0, eval_every=0,
        save_every=0, tensorboard=False, threads=1, advantage=dict(estimator="grpo"), micro_batch_size=4,
        rollout=dict(group_size=2, max_turns=1, max_new_tokens_per_turn=4, batch_size=4),
        data=dict(source=str(bad_vstar), n_eval=0),
    ))
    # 6 playable-or-not samples, 3 steps x 2 prompts: the first epoch's permutation draws every one.
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 3 and summary["skipped_rows"] == 1
    (row,) = [json.loads(line) for line in (tmp_path / "run" / SKIPPED_FILE).read_text().splitlines()]
    assert row["file"].endswith("z_trunc.json") and row["row"] == 0 and "truncated" in row["reason"]
    assert "mapo train: skipped" in capsys.readouterr().err
