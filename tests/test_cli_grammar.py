"""One CLI grammar: --config FILE, KEY=VALUE overrides (--set as alias), --show-config prints the effective config."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import yaml

from mapo.cli import COMMANDS, main
from mapo.data.synth import LEVELS

ROOT = Path(__file__).resolve().parents[1]

# Every command with a config, and one of its knobs with a value that is not its default.
CONFIG_COMMANDS = {
    "train": ("seed", 11), "sft": ("seed", 11), "demo": ("threads", 2), "eval": ("hit_iou", 0.25),
    "data synth": ("grid_lines", 0.5), "verifier train": ("seed", 11), "experiment compare": ("seeds", 5),
}


def _show(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--show-config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def test_show_config_prints_the_effective_config_not_the_defaults(capsys):
    config = str(ROOT / "configs" / "train_tiny.yaml")
    assert yaml.safe_load(Path(config).read_text())["steps"] != 7
    shown = _show(capsys, ["train", "--config", config])
    assert shown["steps"] == yaml.safe_load(Path(config).read_text())["steps"]
    assert _show(capsys, ["train", "--config", config, "steps=7", "optim.lr=0.002"])["optim"]["lr"] == 0.002
    assert _show(capsys, ["train", "--config", config, "--algo", "grpo"])["advantage"]["estimator"] == "grpo"


@pytest.mark.parametrize("command", list(CONFIG_COMMANDS))
def test_every_config_command_takes_config_and_both_override_spellings(command, capsys, tmp_path):
    argv = command.split()
    key, value = CONFIG_COMMANDS[command]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    from_file = _show(capsys, argv + ["--config", str(config)])
    positional = _show(capsys, argv + ["--config", str(config), f"{key}={value}"])
    alias = _show(capsys, argv + ["--set", f"{key}={value}", "--config", str(config)])
    assert from_file[key] == positional[key] == alias[key] == value
    assert from_file == positional == alias


@pytest.mark.parametrize("command", ["train", "sft", "eval", "data synth", "verifier train", "demo"])
def test_show_config_output_is_a_valid_config_that_changes_nothing(command, capsys, tmp_path):
    argv = command.split()
    first = _show(capsys, argv)
    saved = tmp_path / "shown.yaml"
    saved.write_text(yaml.safe_dump(first))
    assert _show(capsys, argv + ["--config", str(saved)]) == first


def test_demo_show_config_resolves_the_rl_stage(capsys):
    shown = _show(capsys, ["demo", "rl.steps=9"])
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert shown["rl"]["steps"] == 9 and shown["rl"]["rollout"]["group_size"] == demo["rl"]["rollout"]["group_size"]
    assert "micro_batch_size" in shown["rl"] and "policy" not in shown["rl"]  # every RL knob; the pipeline fills policy


def test_unknown_key_suggests_the_nearest(capsys):
    assert main(["train", "stepz=3", "--show-config"]) == 2
    assert "did you mean 'steps'?" in capsys.readouterr().err
    assert main(["eval", "--set", "rollout.max_turn=3", "--show-config"]) == 2
    assert "did you mean 'rollout.max_turns'?" in capsys.readouterr().err


def _leaves(parser: argparse.ArgumentParser, path: str):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, f"{path} {name}")


def _parsers():
    for name, (module, help_) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"mapo {name}", description=help_)
        importlib.import_module(f"mapo.cli.{module}").add_arguments(parser)
        yield from _leaves(parser, f"mapo {name}")


def test_every_leaf_command_has_a_description():
    missing = [path for path, parser in _parsers() if not parser.description]
    assert not missing


@pytest.mark.parametrize("path", ["mapo data synth", "mapo verifier train", "mapo verifier inspect", "mapo bench rollout",
                                  "mapo eval"])
def test_help_lists_every_level(path):
    parser = dict(_parsers())[path]
    text = " ".join(parser.format_help().split())
    assert all(level in text for level in LEVELS), [lv for lv in LEVELS if lv not in text]


def test_eval_synth_source_accepts_every_level():
    from mapo.eval import load_eval_samples

    samples, report = load_eval_samples("synth:1:pattern_distractors:5")
    assert len(samples) == 1 and samples[0].meta.get("level", "pattern_distractors") == "pattern_distractors"
    with pytest.raises(ValueError, match="unknown level 'nope'; choose from easy, "):
        load_eval_samples("synth:1:nope")


def test_demo_finds_its_config_from_another_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = _show(capsys, ["demo"])
    assert shown["rl"]["steps"] == yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["rl"]["steps"]
    assert shown["verifier"]["synth_level"] != "medium"  # demo.yaml's, not the built-in default


def test_demo_refuses_without_its_default_config(capsys, monkeypatch):
    from mapo.cli import demo

    monkeypatch.setattr(demo, "DEFAULT_CONFIG", "no_such_demo.yaml")
    assert main(["demo", "--show-config"]) == 2
    assert "configs/no_such_demo.yaml by default" in capsys.readouterr().err


def test_warmstart_recipe_resolves_from_another_folder(tmp_path, monkeypatch):
    from mapo.pipelines.demo_config import WarmStartConfig

    monkeypatch.chdir(tmp_path)
    recipe = WarmStartConfig(sft_config="configs/warmstart.yaml").recipe()
    assert recipe.steps == yaml.safe_load((ROOT / "configs" / "warmstart.yaml").read_text())["steps"]
