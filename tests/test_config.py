from __future__ import annotations

import dataclasses

import pytest

from mapo.core.config import apply_overrides, describe, from_dict, knob, load_config, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    beta: float = knob(0.4, "coupling weight")
    tags: tuple[str, ...] = knob(("a", "b"), "tag names")


@dataclasses.dataclass(frozen=True)
class Outer:
    lr: float = knob(1e-3, "learning rate")
    steps: int = knob(10, "number of steps")
    name: str | None = knob(None, "optional name")
    inner: Inner = knob(factory=Inner, help="nested section")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_round_trip_and_nested_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\ninner:\n  beta: 0.2\n")
    cfg = load_config(Outer, path, ["steps=3", "inner.tags=[x, y, z]"])
    assert cfg == Outer(lr=0.01, steps=3, inner=Inner(beta=0.2, tags=("x", "y", "z")))
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_names_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) inner.gamma .*valid keys: beta, tags"):
        from_dict(Outer, {"inner": {"gamma": 1}})


def test_type_errors_are_clear():
    with pytest.raises(ValueError, match="'steps' must be an integer"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ValueError, match="'lr' must be a number"):
        from_dict(Outer, {"lr": True})


def test_post_init_rejects_bad_combination():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        load_config(Outer, overrides=["steps=0"])


def test_overrides_do_not_mutate_input_and_need_equals():
    base = {"inner": {"beta": 1.0}}
    out = apply_overrides(base, ["inner.beta=2"])
    assert base == {"inner": {"beta": 1.0}} and out == {"inner": {"beta": 2}}
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(base, ["lr"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_describe_lists_help():
    text = "\n".join(describe(Outer))
    assert "lr = 0.001  # learning rate" in text
    assert "beta = 0.4  # coupling weight" in text
