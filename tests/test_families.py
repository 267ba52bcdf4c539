"""The model-family registry (mapo.policy.families): every entry resolves, every tiny family
round-trips through save and load_policy with the registry's classes, and the refusals list it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mapo.policy import SUPPORTED_MODEL_TYPES, backend_for, build_tiny_policy, load_policy
from mapo.policy.backend import QwenVLBackend
from mapo.policy.families import FAMILIES, TINY_ARCHS, ModelFamily, family_of
from mapo.policy.processor import PROCESSOR_CLASSES, build_processor
from mapo.policy.tiny import ARCHS

torch.set_num_threads(1)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_entry_resolves(model_type):
    import transformers

    family = FAMILIES[model_type]
    assert family.model_type == model_type and family.label
    assert issubclass(family.backend_cls(), QwenVLBackend)
    processor_cls = family.processor_cls()
    assert issubclass(processor_cls, transformers.ProcessorMixin)
    # The standard processor, whose name a saved processor_config.json carries, exists in transformers.
    assert issubclass(getattr(transformers, family.standard_processor), transformers.ProcessorMixin)
    assert issubclass(family.model_cls(), transformers.PreTrainedModel)
    assert family.model_cls().config_class is family.config_cls()
    assert family.config_cls().model_type == model_type
    assert PROCESSOR_CLASSES[model_type] == (processor_cls, family.standard_processor)
    if family.tiny_config is not None:
        assert callable(family.tiny_config_fn())
    else:
        with pytest.raises(ValueError, match="has no tiny builder"):
            family.tiny_config_fn()


def test_public_names_read_the_registry():
    assert SUPPORTED_MODEL_TYPES == tuple(FAMILIES) == ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")
    assert ARCHS == TINY_ARCHS == ("qwen2_5_vl", "qwen3_vl")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_family_round_trips_through_load_policy(arch, tmp_path):
    family = FAMILIES[arch]
    policy = build_tiny_policy("tiny", arch=arch, seed=0, text_layers=1, vision_depth=1)
    assert type(policy.model) is family.model_cls() and type(policy.processor) is family.processor_cls()
    assert type(backend_for(policy.model)) is family.backend_cls()
    policy.save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["model_type"] == arch
    processor_config = json.loads((tmp_path / "p" / "processor_config.json").read_text())
    assert processor_config["processor_class"] == family.standard_processor
    loaded = load_policy(tmp_path / "p")
    assert type(loaded.model) is family.model_cls() and type(loaded.processor) is family.processor_cls()
    assert type(backend_for(loaded.model)) is family.backend_cls()
    for (name, a), (_, b) in zip(policy.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_unknown_types_are_refused_with_the_registry(tmp_path):
    labels = [f.label for f in FAMILIES.values()]
    with pytest.raises(ValueError, match="'llava' model") as err:
        family_of("llava")
    assert all(t in str(err.value) for t in FAMILIES) and all(label in str(err.value) for label in labels)
    with pytest.raises(ValueError, match="model types qwen2_5_vl, qwen2_vl, qwen3_vl"):
        build_processor(None, model_type="llava")
    with pytest.raises(ValueError, match=r"unknown arch 'qwen2_vl'; choose from \['qwen2_5_vl', 'qwen3_vl'\]"):
        build_tiny_policy("tiny", arch="qwen2_vl")


def test_a_new_entry_is_picked_up_without_other_edits(monkeypatch):
    """Adding a family is its registry entry: backend_for and the refusal message read it."""
    new = dataclasses.replace(FAMILIES["qwen3_vl"], model_type="qwen9_vl", label="Qwen9-VL")
    assert isinstance(new, ModelFamily)
    monkeypatch.setitem(FAMILIES, "qwen9_vl", new)
    policy = build_tiny_policy("tiny", arch="qwen3_vl", seed=0, text_layers=1, vision_depth=1)
    policy.model.config.model_type = "qwen9_vl"
    assert type(backend_for(policy.model)) is new.backend_cls()
    with pytest.raises(ValueError, match=r"qwen3_vl, qwen9_vl \(.*Qwen9-VL\)"):
        family_of("llava")
