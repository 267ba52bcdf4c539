"""mapo.policy.default: the shipped warm-start checkpoint, its manifest and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mapo.policy import default
from mapo.core.shipped import sha256_of


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny policy packed with `ship` exactly as the real default is (a fake SFT run directory)."""
    from mapo.policy import build_tiny_policy

    root = tmp_path_factory.mktemp("default")
    run = root / "run"
    from mapo.agent.protocol import ProtocolConfig

    policy = build_tiny_policy("tiny", seed=0, text_layers=1, vision_depth=1)
    policy.protocol = ProtocolConfig(system_template="Zoom with $tool_name.")  # as `mapo sft` records it
    policy.save(run / "final")
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": 3, "policy": {"seed": 4}, "data": {"seed": 5}}))
    (run / "goals_easy.json").write_text(json.dumps({"first_zoom_hit": 0.5}))
    manifest = default.ship(run, root / "asset", command="mapo sft --config X --out Y")
    return root / "asset", manifest, policy.model.state_dict()


def test_manifest_names_command_config_seed_and_every_file_hash(shipped):
    path, manifest, _ = shipped
    assert manifest["command"] == "mapo sft --config X --out Y"
    assert manifest["seed"] == {"train": 3, "policy_init": 4, "data": 5}
    assert manifest["metrics"]["goals_easy"]["first_zoom_hit"] == 0.5
    assert set(manifest["files"]) == set(default.SHIPPED_FILES)
    for name, digest in manifest["files"].items():
        assert sha256_of(path / name) == digest
    assert json.loads((path / default.MANIFEST).read_text()) == manifest


def test_load_default_returns_the_shipped_weights(shipped):
    path, _, original = shipped
    policy = default.load_default(path)
    state = policy.model.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)
    assert policy.tokenizer.convert_tokens_to_ids("<|im_end|>") in policy.eos_token_ids
    assert policy.protocol.system_template == "Zoom with $tool_name."  # prompted as it was trained


def test_tampered_file_is_refused_with_the_rebuild_command(shipped, tmp_path):
    path, _, _ = shipped
    copy = tmp_path / "asset"
    shutil.copytree(path, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(default.DefaultPolicyError, match="model.safetensors does not match") as err:
        default.load_default(copy)
    assert default.REBUILD_COMMAND in str(err.value)


def test_missing_file_and_missing_manifest_are_refused(shipped, tmp_path):
    path, _, _ = shipped
    copy = tmp_path / "asset"
    shutil.copytree(path, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(default.DefaultPolicyError, match="missing tokenizer.json"):
        default.verify(copy)
    (copy / default.MANIFEST).unlink()
    with pytest.raises(default.DefaultPolicyError, match="manifest.json missing"):
        default.load_default(copy)


def test_ship_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "final").mkdir()
    with pytest.raises(default.DefaultPolicyError, match="not a finished SFT policy"):
        default.ship(tmp_path, tmp_path / "out")


def test_the_shipped_default_matches_its_manifest():
    """The checkpoint in the package itself: every file present and unaltered, within the size budget."""
    manifest = default.verify()
    total = sum((default.DEFAULT_DIR / name).stat().st_size for name in manifest["files"])
    assert total <= 20 * 2**20
    assert manifest["command"] == default.TRAIN_COMMAND


def test_earlier_stages_follow_init_from_and_refuse_a_broken_config(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for run, init in ((first, None), (second, str(first / "final"))):
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"policy": {"init_from": init}, "data": {"level": run.name}}))
    stages = default.earlier_stages({"policy": {"init_from": str(second / "final")}})
    assert [s["config"]["data"]["level"] for s in stages] == ["first", "second"]
    assert default.earlier_stages({"policy": {"init_from": None}}) == []
    # An RL run's config names its start as a path (``policy: DIR``); the chain goes on from there.
    assert [s["config"]["data"]["level"] for s in default.earlier_stages({"policy": str(second / "final")})] == [
        "first", "second"]
    (first / "config.yaml").write_text("policy: [unclosed")
    with pytest.raises(default.DefaultPolicyError, match="first/config.yaml .* not valid YAML"):
        default.earlier_stages({"policy": {"init_from": str(second / "final")}})


def test_manifest_with_an_emptied_file_list_is_refused(shipped, tmp_path):
    path, _, _ = shipped
    copy = tmp_path / "asset"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / default.MANIFEST).read_text())
    manifest["files"] = {}
    (copy / default.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(default.DefaultPolicyError, match="does not list .*model.safetensors"):
        default.load_default(copy)


def test_an_unlisted_file_in_the_directory_is_refused(shipped, tmp_path):
    path, _, _ = shipped
    copy = tmp_path / "asset"
    shutil.copytree(path, copy)
    (copy / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(default.DefaultPolicyError, match="does not list: adapter_model.safetensors"):
        default.load_default(copy)
    (copy / "adapter_model.safetensors").unlink()
    (copy / "lora").mkdir()
    (copy / "lora" / "adapter_config.json").write_text("{}")
    with pytest.raises(default.DefaultPolicyError, match="lora/adapter_config.json"):
        default.verify(copy)


def test_the_shipped_stage_four_checkpoint_matches_its_manifest():
    """mapo/assets/warmstart_scan (the demo's RL start): unaltered, stage 4's config, the first four stages' command."""
    manifest = default.verify(default.SCAN_DIR)
    assert manifest["command"] == default.SCAN_COMMAND and manifest["config_file"] == "configs/warmstart_scan.yaml"
    assert manifest["config"]["data"]["option_scan"] and not manifest["config"]["data"].get("scan_words_weighted")
    assert [Path(s["run"]).name for s in manifest["earlier_stages"]] == ["letters", "closeup", "pattern"]


def test_the_shipped_search_warm_start_matches_its_manifest():
    """mapo/assets/warmstart_search (the start of RL among distractors): unaltered, one stage on top of the default."""
    manifest = default.verify(default.DEFAULT_DIR.parent / "warmstart_search")
    assert manifest["config_file"] == "configs/warmstart_search.yaml"
    assert manifest["command"].startswith("mapo sft --config configs/warmstart_search.yaml")
    config = manifest["config"]
    assert config["policy"]["init_from"] == "mapo/assets/warmstart" and config["data"]["level"] == "pattern_distractors"
    assert not config["data"]["search_misses"] and not config["data"]["view_scan"]  # plain oracle transcripts


def test_the_shipped_rl_search_policy_matches_its_manifest():
    """mapo/assets/rl_search (MAPO-label RL from the search warm start): unaltered, its config is configs/train_search.yaml's."""
    from mapo.core.config import load_config
    from mapo.train.rl import RLConfig

    manifest = default.verify(default.DEFAULT_DIR.parent / "rl_search")
    assert manifest["config_file"] == "configs/train_search.yaml" and "mapo train --config configs/train_search.yaml" in manifest["command"]
    shipped_cfg, config_file = manifest["config"], load_config(RLConfig, "configs/train_search.yaml", [])
    # The run started from the search warm start's own run folder; everything else is the config file's.
    assert [Path(s["run"]).name for s in manifest["earlier_stages"]] == ["find"]
    for key in ("steps", "prompts_per_step", "seed", "semantic_target"):
        assert shipped_cfg[key] == getattr(config_file, key)
    assert shipped_cfg["advantage"]["estimator"] == config_file.advantage.estimator == "mapo"
    assert shipped_cfg["optim"]["lr"] == config_file.optim.lr and shipped_cfg["finetune"]["freeze_vision"]
    test = manifest["metrics"]["goals_test"]
    assert "seed 2000003" in test["set"] and test["policy"]["n"] == 400
