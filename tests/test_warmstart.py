"""The warm-start recipe at tiny scale: its configs chain through ``mapo sft`` and ship as the default policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mapo.policy.default import STAGES

BASE_CONFIG = STAGES[0][0]  # configs/warmstart_letters.yaml: stage 1 of the shipped recipe
EVAL_SEED = 1_000_003  # = SFTEvalConfig.seed: the held-out split
TINY = [
    "steps=2", "batch_size=2", "eval.n_teacher_forced=2", "eval.n_rollout=2", "eval.max_turns=2",
    "eval.max_new_tokens_per_turn=12", "policy.overrides={text_layers: 1, vision_depth: 1}", "threads=1",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Stage 1 of the recipe (configs/warmstart_letters.yaml) through the project's SFT recipe, at tiny scale."""
    from mapo.core.config import load_config
    from mapo.train.sft import SFTConfig, run_sft

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("ws") / "run"
    cfg = load_config(SFTConfig, BASE_CONFIG, TINY)
    run_sft(cfg, run_dir)
    return run_dir


def test_recipe_trains_and_ships_at_tiny_scale(tiny_run, tmp_path):
    from mapo.policy import build_tiny_policy, default

    ev = json.loads((tiny_run / "eval.json").read_text())
    assert ev["step"] == 2 and ev["heldout/n"] == 2.0
    default.ship(tiny_run, tmp_path / "asset")
    policy = default.load_default(tmp_path / "asset")
    init = build_tiny_policy("tiny", seed=0, text_layers=1, vision_depth=1)  # the recipe's starting weights
    name = "model.language_model.embed_tokens.weight"
    assert not torch.equal(policy.model.state_dict()[name], init.model.state_dict()[name])  # training moved them


def test_the_five_stage_recipe_chains_and_its_manifest_records_every_stage(tiny_run, tmp_path):
    """configs/warmstart_letters -> _closeup -> _pattern -> _scan -> warmstart.yaml at tiny scale, each stage
    from the previous one's final/, as ``default.TRAIN_COMMAND`` runs them; ship records all five configs."""
    import yaml

    from mapo.core.config import load_config
    from mapo.policy import default
    from mapo.train.sft import SFTConfig, run_sft

    (first_config, first_out), *later = default.STAGES
    assert first_config == BASE_CONFIG
    previous_out, previous_run = first_out, tiny_run  # stage 1 is the tiny_run fixture
    for config_path, out in later:
        recipe = yaml.safe_load(open(config_path, encoding="utf-8"))
        assert recipe["policy"]["init_from"] == f"{previous_out}/final"  # the chain the command runs
        run_dir = tmp_path / Path(out).name
        run_sft(load_config(SFTConfig, config_path, [*TINY, f"policy.init_from={previous_run}/final"]), run_dir)
        previous_out, previous_run = out, run_dir
    assert previous_out == "runs/warmstart/default"
    manifest = default.ship(previous_run, tmp_path / "asset")
    assert manifest["command"] == default.TRAIN_COMMAND
    stages = manifest["earlier_stages"]
    runs = [tiny_run, tmp_path / "closeup", tmp_path / "pattern", tmp_path / "scan"]
    assert [Path(stage["run"]) for stage in stages] == runs
    assert [stage["config"]["data"]["level"] for stage in stages] == ["easy", "closeup", "pattern", "pattern"]
    # Stages 2-3 list options in one fixed order; stages 4-5 shuffle them like the file formats, and scan them.
    assert [stage["config"]["data"]["synth"].get("fixed_options") for stage in stages] == [None, True, True, None]
    assert [stage["config"]["data"]["option_scan"] for stage in stages] == [False, False, False, True]
    data = manifest["config"]["data"]
    assert data["level"] == "pattern" and not data["synth"] and data["option_scan"] and data["scan_words_weighted"]


@pytest.mark.parametrize("level", ["easy", "distractors", "medium"])
def test_a_perfect_first_zoom_counts_as_a_hit(level):
    """The oracle's zoom is the smallest crop, one 112 px cell; objects fill 75% of its side,
    so IoU = 84^2 / 112^2 = 0.5625 >= 0.5 (at 70% it was 0.485: no zoom could ever hit)."""
    from mapo.data.oracle import oracle_trajectory
    from mapo.agent.tools import box_iou

    from mapo.data import synth

    for sample in synth.generate(4, seed=EVAL_SEED, config=synth.level_config(level)):
        crop = oracle_trajectory(sample, rng_or_seed=0).boxes_original[0]
        assert box_iou(crop, sample.target_boxes[0].xyxy) == pytest.approx(0.5625)
