"""Typed override sections (``data.synth``, the pipeline's ``rl``) and every shipped config file.

Each file in configs/ must load with its command's config class; the sections that override part
of another config are dataclasses (unknown keys are errors with a "did you mean"), and they
serialise as the mapping the user wrote, so saved configs and cache keys read as before.
"""

from pathlib import Path

import pytest
import yaml

from mapo.core import config_files
from mapo.core.config import apply_overrides, from_dict, load_config, partial, to_dict
from mapo.data.synth import SynthConfig, SynthOverrides, level_config
from mapo.pipelines.compare import CompareConfig
from mapo.pipelines.demo_config import PipelineConfig, RLOverrides, rl_config
from mapo.train.rl import RLConfig
from mapo.train.sft import SFTConfig
from mapo.verifier.train import VerifierTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Each file's command: `mapo demo` / `experiment compare` / `sft` / `train` / `verifier train`.
CLASS_OF = {"demo": PipelineConfig, "compare": CompareConfig, "sft": SFTConfig, "warmstart": SFTConfig,
            "train": RLConfig, "verifier": VerifierTrainConfig, "qwen2": RLConfig, "qwen3": RLConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_with_its_commands_class(path):
    cls = CLASS_OF[path.stem.split("_")[0]]
    data = config_files.resolve_data(cls, str(path), [])
    cfg = from_dict(cls, data)
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg))) == to_dict(cfg)  # plain YAML data


def test_synth_section_is_typed_and_keeps_only_the_keys_set(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("data:\n  level: pattern\n  synth: {fixed_options: true}\n")
    cfg = load_config(SFTConfig, path, ["data.synth.obs_side=140"])
    assert isinstance(cfg.data.synth, SynthOverrides)
    assert cfg.data.synth.set_keys() == {"obs_side": 140, "fixed_options": True}
    assert to_dict(cfg)["data"]["synth"] == {"obs_side": 140, "fixed_options": True}
    assert to_dict(SFTConfig())["data"]["synth"] == {}  # nothing set: an empty mapping, as before
    resolved = level_config("pattern", **cfg.data.synth.set_keys())
    assert resolved.obs_side == 140 and resolved.asks == "pattern"  # unset knobs keep the level's value
    # YAML round trip: the saved config loads back to the same config.
    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(SFTConfig, tmp_path / "saved.yaml") == cfg


def test_unknown_or_mistyped_section_keys_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) data\.synth\.obs_sid .*did you mean 'data\.synth\.obs_side'"):
        load_config(SFTConfig, None, ["data.synth.obs_sid=112"])
    with pytest.raises(ValueError, match="config key 'data.synth.obs_side' must be an integer"):
        load_config(RLConfig, None, ["policy=p", "data.synth.obs_side=wide"])
    with pytest.raises(ValueError, match=r"rl\.optim\.lrr .*did you mean 'rl\.optim\.lr'"):
        load_config(PipelineConfig, None, ["rl.optim.lrr=1e-3"])
    with pytest.raises(ValueError, match="rl.policy is set by the pipeline"):
        load_config(PipelineConfig, None, ["rl.policy=x"])
    with pytest.raises(ValueError, match="rl.data.eval_source is set by the pipeline"):
        load_config(PipelineConfig, None, ["rl.data.eval_source=x"])


def test_pipeline_rl_section_fills_rl_config_like_the_mapping_did():
    cfg = load_config(PipelineConfig, None, ["rl.steps=7", "rl.data.synth_level=pattern", "rl.data.synth.grid=2",
                                             "rl.advantage.beta=0.2"])
    assert isinstance(cfg.rl, RLOverrides)
    assert to_dict(cfg.rl) == {"steps": 7, "advantage": {"beta": 0.2}, "data": {"synth_level": "pattern", "synth": {"grid": 2}}}
    rl = rl_config(cfg, policy="p", verifier="v", heldout="h")
    want = from_dict(RLConfig, apply_overrides({}, [
        "steps=7", "advantage.beta=0.2", "data.synth_level=pattern", "data.synth.grid=2", "policy=p", "verifier=v",
        "data.eval_source=h", f"data.n_eval={cfg.data.n}", f"threads={cfg.threads}",
    ]))
    assert rl == want
    spec = cfg.heldout_spec()
    assert spec["level"] == "pattern" and spec["synth"] == {"grid": 2} and spec["task"]["grid"] == 2
    assert PipelineConfig().heldout_spec()["level"] == "easy"  # RLDataConfig's default, read from RLConfig


def test_partial_of_a_partial_is_itself():
    assert partial(SynthConfig) is SynthOverrides and partial(SynthOverrides) is SynthOverrides


def test_show_config_output_loads_back_with_an_empty_synth_section(tmp_path, capsys):
    from mapo.cli import main

    assert main(["sft", "--show-config"]) == 0
    shown = capsys.readouterr().out
    assert "  synth: {}" in shown
    (tmp_path / "shown.yaml").write_text(shown)
    assert load_config(SFTConfig, tmp_path / "shown.yaml") == SFTConfig()
