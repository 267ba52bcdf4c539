"""Optional Weights & Biases mirror of the metrics (the package is not a dependency)."""

from __future__ import annotations

import sys
import types

import pytest

from mapo.train.metrics_log import MetricsLogger, read_metrics


def _fake_wandb(calls: list):
    run = types.SimpleNamespace(log=lambda data, step: calls.append(("log", step, data)),
                                finish=lambda: calls.append(("finish",)))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return run

    return types.SimpleNamespace(init=init)


def test_metrics_are_mirrored_to_wandb_when_asked(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    logger = MetricsLogger(tmp_path / "run", tensorboard=False, wandb="mapo-tests", config={"steps": 3})
    logger.log(2, {"reward_mean": 0.5})
    logger.close()
    (kind, init), log, finish = calls
    assert kind == "init" and init["project"] == "mapo-tests" and init["name"] == "run" and init["config"] == {"steps": 3}
    assert init["resume"] == "allow" and init["id"].startswith("run-")  # a resumed run continues its W&B run
    assert log == ("log", 2, {"reward_mean": 0.5}) and finish == ("finish",)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == [{"step": 2, "reward_mean": 0.5}]  # written as always


def test_no_wandb_by_default_and_a_clear_error_without_the_package(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    MetricsLogger(tmp_path / "a", tensorboard=False).close()
    assert calls == []
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ValueError, match="wandb package is not installed: pip install wandb"):
        MetricsLogger(tmp_path / "b", tensorboard=False, wandb="p")


def test_wandb_is_a_knob_that_changes_nothing_trained():
    from mapo.pipelines.stage_cache import SPEED_ONLY_KEYS
    from mapo.train.rl import RESUMABLE_KEYS as RL_RESUMABLE
    from mapo.train.sft import RESUMABLE_KEYS as SFT_RESUMABLE

    assert "wandb" in RL_RESUMABLE and "wandb" in SFT_RESUMABLE and "wandb" in SPEED_ONLY_KEYS
