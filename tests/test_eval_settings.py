"""Where ``mapo eval``'s settings come from: the model's files, the preset, the file and overrides;
and the names (``default``, ``shipped:NAME``, ``mapo/assets/NAME``) that resolve from any folder."""

from __future__ import annotations

import json

import pytest
import yaml

from mapo.cli import main
from mapo.eval.config import DEEPEYES_MAX_PIXELS, PUBLISHED_MAX_NEW_TOKENS, eval_config
from mapo.policy.settings import read_model_settings


def _published(root, *, generation=None, mapo=False):
    """The JSON files of a Qwen2.5-VL-7B release (no weights): what the settings are read from."""
    root.mkdir(parents=True)
    (root / "preprocessor_config.json").write_text(json.dumps(
        {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2}))
    (root / "config.json").write_text(json.dumps(
        {"model_type": "qwen2_5_vl", "text_config": {"max_position_embeddings": 128000}}))
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645], **(generation or {})}))
    if mapo:
        (root / "mapo_protocol.json").write_text("{}")
    return root


def _shown(capsys, *argv) -> dict:
    assert main(["eval", "--show-config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_settings_are_read_from_the_checkpoint_files(tmp_path):
    s = read_model_settings(_published(tmp_path / "m", generation={"max_new_tokens": 512}))
    assert (s.min_pixels, s.max_pixels, s.factor, s.max_new_tokens, s.context) == (3136, 12845056, 28, 512, 128000)
    (tmp_path / "t").mkdir()  # transformers 5 writes size.shortest_edge / longest_edge
    (tmp_path / "t" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 65536, "longest_edge": 16777216}, "patch_size": 16, "merge_size": 2}))
    s = read_model_settings(tmp_path / "t")
    assert (s.min_pixels, s.max_pixels, s.factor, s.max_new_tokens, s.context) == (65536, 16777216, 32, None, None)
    (tmp_path / "t" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        read_model_settings(tmp_path / "t")


def test_show_config_prints_the_model_budgets(tmp_path, capsys):
    model = _published(tmp_path / "m")
    rollout = _shown(capsys, "--model", str(model))["rollout"]
    assert rollout["tool"]["view_max_pixels"] == rollout["tool"]["obs_max_pixels"] == 12845056
    assert rollout["tool"]["view_min_pixels"] == 3136
    assert (rollout["max_new_tokens_per_turn"], rollout["max_total_tokens"]) == (PUBLISHED_MAX_NEW_TOKENS, 128000)
    # Without a model: the tiny task's budgets.
    assert _shown(capsys)["rollout"]["tool"]["view_max_pixels"] == 224 * 224


def test_generation_config_and_mapo_checkpoints_set_the_tokens(tmp_path):
    config, notes = eval_config(str(_published(tmp_path / "g", generation={"max_new_tokens": 300})))
    assert config.rollout.max_new_tokens_per_turn == 300 and any("generation_config.json" in n for n in notes)
    # A checkpoint mapo wrote keeps the limits it was trained with; its pixels still come from its processor.
    config, _ = eval_config(str(_published(tmp_path / "p", mapo=True)))
    assert config.rollout.max_new_tokens_per_turn == 96 and config.rollout.tool.view_max_pixels == 12845056


def test_preset_then_file_then_overrides(tmp_path, capsys):
    model = _published(tmp_path / "m")
    shown = _shown(capsys, "--model", str(model), "--preset", "deepeyes")
    assert shown["preset"] == "deepeyes" and shown["tool_from_data"] is False
    assert (shown["rollout"]["max_turns"], shown["rollout"]["max_new_tokens_per_turn"]) == (11, 10240)
    assert shown["rollout"]["tool"]["view_max_pixels"] == DEEPEYES_MAX_PIXELS
    assert _shown(capsys, "--preset", "deepeyes-hrbench")["rollout"]["max_new_tokens_per_turn"] == 8192
    # A preset named in the file is layered as --preset is; overrides win over it.
    (tmp_path / "c.yaml").write_text("preset: deepeyes\nrollout:\n  max_turns: 3\n")
    config, _ = eval_config(str(model), path=str(tmp_path / "c.yaml"), overrides=["rollout.tool.view_max_pixels=200704"])
    assert (config.rollout.max_turns, config.rollout.max_new_tokens_per_turn) == (3, 10240)
    assert config.rollout.tool.view_max_pixels == 200704 and config.rollout.protocol.system_template.startswith("You are")


def test_a_preset_named_without_its_values_is_refused():
    from mapo.eval import EvalConfig

    with pytest.raises(ValueError, match="preset 'deepeyes' was named but its values were not applied"):
        EvalConfig(preset="deepeyes")
    with pytest.raises(ValueError, match="preset must be one of mapo, deepeyes, deepeyes-hrbench"):
        eval_config(preset="mini")


def test_metrics_record_the_effective_budgets(tmp_path, tiny_policy_dir):
    """An eval of a checkpoint whose processor takes [112^2, 336^2] px runs at, and records, those budgets."""
    import shutil

    shutil.copytree(tiny_policy_dir, tmp_path / "m")
    path = tmp_path / "m" / "processor_config.json"  # where save_pretrained puts the image processor's settings
    processor = json.loads(path.read_text())
    processor["image_processor"]["size"] = {"shortest_edge": 112 * 112, "longest_edge": 336 * 336}
    path.write_text(json.dumps(processor))
    out = tmp_path / "eval"
    assert main(["eval", "--data", "synth:1", "--model", str(tmp_path / "m"), "--out", str(out), "--no-progress",
                 "tool_from_data=false", "rollout.max_turns=1", "rollout.max_new_tokens_per_turn=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    tool = metrics["run"]["config"]["rollout"]["tool"]
    assert (tool["view_min_pixels"], tool["view_max_pixels"]) == (112 * 112, 336 * 336)
    assert any("image processor" in n for n in metrics["run"]["settings_from_model"])
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["view_size"] == [336, 336]  # the synthetic 448 px image at the model's budget, not 224 px


def test_shipped_names_resolve_from_any_folder(tmp_path, monkeypatch):
    """`--model default` / `shipped:NAME` and `--verifier mapo/assets/verifier` work outside the checkout."""
    from mapo.policy.default import DEFAULT_DIR, SCAN_DIR, load_named_policy, resolve_policy_dir
    from mapo.verifier.default import DEFAULT_DIR as VERIFIER_DIR
    from mapo.verifier.default import resolve_verifier_dir

    monkeypatch.chdir(tmp_path)
    assert resolve_policy_dir("default") == DEFAULT_DIR and resolve_policy_dir("shipped:warmstart_scan") == SCAN_DIR
    assert resolve_verifier_dir("mapo/assets/verifier") == VERIFIER_DIR == resolve_verifier_dir("default")
    assert str(resolve_policy_dir("runs/sft/final")) == "runs/sft/final"
    for name in ("shipped:nope", "shipped:../../etc"):
        with pytest.raises(ValueError, match="no shipped checkpoint of that name; shipped: .*warmstart_scan"):
            resolve_policy_dir(name)
    assert main(["eval", "--data", "synth:1:pattern", "--no-progress", "--model", "shipped:warmstart_scan",
                 "--verifier", "mapo/assets/verifier", "--out", "scan", "rollout.max_turns=2"]) == 0
    metrics = json.loads((tmp_path / "scan" / "metrics.json").read_text())
    assert metrics["tools"]["tool_calls_per_sample"] == 1 and metrics["tools"]["semantic_score_mean"] is not None
    assert load_named_policy("default").path == str(DEFAULT_DIR)  # checked against its manifest, then loaded


def test_the_old_name_of_tool_from_data_still_reads(tmp_path):
    """Configs and overrides written when the key was called tool_from_samples keep working (one place renames it)."""
    from mapo.core.config import from_dict
    from mapo.eval.config import EvalConfig, eval_config_data

    data, _ = eval_config_data(overrides=["tool_from_samples=false"])
    assert data["tool_from_data"] is False and "tool_from_samples" not in data
    path = tmp_path / "eval.yaml"
    path.write_text("tool_from_samples: false\n")
    assert eval_config_data(path=str(path))[0]["tool_from_data"] is False
    assert from_dict(EvalConfig, {"tool_from_samples": False}).tool_from_data is False
    assert eval_config_data()[0]["tool_from_data"] is True
