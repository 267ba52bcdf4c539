"""``mapo demo`` / :mod:`mapo.pipelines.demo`: a CI-sized end-to-end run, the stage cache, bad input.

The smoke run uses the real stages with a tiny budget: held-out data written to
disk, a tiny CLIP trained for a few steps by ``train_tiny_clip``, an SFT warm start
of a 1-layer tiny Qwen2.5-VL (two steps of ``run_sft`` from a freshly built policy),
two MAPO steps whose training rollouts are partly scripted (a random policy never
calls the tool; see ``forced``), greedy held-out evaluation before and after, the
HTML report and the summary. A second run on the same directories must reuse
every cached stage and read the finished RL run back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mapo.core.config import from_dict, to_dict
from tiny_assets import FORCED_ANSWER, FORCED_ZOOM


def forced(group: int, member: int, turn: int) -> str | None:
    """Member 0 of every group zooms, describes and answers A; the others sample (so rewards differ)."""
    if member == 0:
        return [FORCED_ZOOM, FORCED_ANSWER][turn] if turn < 2 else None
    return None


def tiny_pipeline_dict(tmp: Path, policy_dir: Path) -> dict:
    return {
        "cache_dir": str(tmp / "cache"),
        "threads": 1,
        "eval_batch_size": 4,
        "data": {"n": 2, "seed": 1_000_003},
        "test": {"n": 3, "seed": 2_000_003},
        "verifier": {
            "n_samples": 6, "crops_per_sample": 2, "hard_negatives": 1, "val_fraction": 0.34, "image_size": 28,
            "patch_size": 14, "vision_width": 32, "vision_layers": 1, "text_width": 32, "text_layers": 1, "heads": 2,
            "projection_dim": 16, "max_text_tokens": 16, "steps": 3, "batch_size": 8, "warmup_steps": 1,
            "num_threads": 1, "eval_candidates": 2,
        },
        "warmstart": {
            "source": "sft",
            "sft_config": None,
            "sft": {
                "steps": 2, "batch_size": 1, "policy": {"init_from": str(policy_dir)},
                "eval": {"n_teacher_forced": 1, "n_rollout": 0}, "log_every": 1, "eval_every": 0, "save_every": 0,
                "keep_last": 1, "tensorboard": False, "progress": False,
            },
        },
        "rl": {
            "steps": 2, "prompts_per_step": 2, "seed": 0, "micro_batch_size": 2, "eval_every": 0, "save_every": 0,
            "tensorboard": False, "bootstrap_every": 1, "bootstrap_resamples": 4,
            "rollout": {"group_size": 2, "max_turns": 2, "max_new_tokens_per_turn": 24, "batch_size": 4},
            "optim": {"lr": 1e-3, "warmup_frac": 0.0},
        },
        "search": {"policies": [str(policy_dir)], "n": 2},
    }


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_policy_dir):
    """Two runs of the pipeline on the same directories; returns (tmp, cfg, first summary, second summary, logs)."""
    from mapo.pipelines.demo import run_pipeline
    from mapo.pipelines.demo_config import PipelineConfig

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("demo")
    cfg = from_dict(PipelineConfig, tiny_pipeline_dict(tmp, tiny_policy_dir))
    logs: list[list[str]] = [[], []]
    first = run_pipeline(cfg, tmp / "run", progress=False, forced_turns=forced, log=logs[0].append)
    second = run_pipeline(cfg, tmp / "run", progress=False, forced_turns=forced, log=logs[1].append)
    return tmp, cfg, first, second, logs


def test_smoke_parameters_change_and_every_metric_is_finite(demo_run):
    tmp, _, summary, _, _ = demo_run
    run = tmp / "run"
    before, after = weights(Path(summary["paths"]["policy_before"])), weights(run / "rl" / "final")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "RL did not change any parameter"
    rows = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} >= {1, 2}
    for row in rows:
        for key, value in row.items():
            assert math.isfinite(value), f"{key}={value} at step {row['step']}"
    assert "grad_var_bootstrap" in rows[0] and "semantic_mean" in rows[0]
    # Table values are finite numbers, or None where the denominator is empty (e.g. no valid crop).
    for r in summary["table"] + summary["table_validation"]:
        for col in ("before", "after", "delta"):
            assert r[col] is None or math.isfinite(r[col]), (r["key"], col, r[col])
    before = json.loads((Path(summary["paths"]["eval_before"]) / "metrics.json").read_text())["tools"]
    validation = summary["table_validation"]
    assert validation[0]["key"] == "accuracy" and validation[0]["before"] == before["accuracy"]
    assert before["accuracy"] in (0.0, 0.5, 1.0)  # a share of the 2 validation samples
    # The headline table and the verdict are the test set's (3 samples of another seed), measured once.
    test_before = json.loads((run / "eval_before_test" / "metrics.json").read_text())["tools"]
    test_after = json.loads((run / "rl" / "eval_test" / "metrics.json").read_text())["tools"]
    assert test_before["n"] == test_after["n"] == 3
    assert summary["table"] == summary["table_test"] and summary["verdict_set"] == "test"
    assert summary["table"][0]["before"] == test_before["accuracy"] and summary["table"][0]["after"] == test_after["accuracy"]
    assert "on n=3" in summary["verdict"] or "no held-out samples" in summary["verdict"]
    assert summary["sets"] == {"validation": {"n": 2, "seed": 1_000_003}, "test": {"n": 3, "seed": 2_000_003}}
    assert summary["n_heldout"] == 2 and summary["rl_steps"] == 2 and summary["algorithm"] == "mapo"
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    assert summary["rl_trend"] == {"key": "reward_mean", "window": 2, "first": pytest.approx(sum(rewards) / 2),
                                   "last": pytest.approx(sum(rewards) / 2)}


def test_smoke_writes_summary_report_and_both_evaluations(demo_run):
    tmp, _, summary, _, _ = demo_run
    run = tmp / "run"
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["table"] == summary["table"]
    md = (run / "summary.md").read_text()
    assert "| accuracy |" in md and "Verdict" in md and str(run) in md
    test_at, validation_at = md.index("## Test set (3 samples, seed 2000003)"), md.index("## Validation set (2 samples")
    assert test_at < md.index("**Verdict (test set (3 samples, seed 2000003)):**") < validation_at
    for name in ("eval_before", "rl/eval"):
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["tools"]["n"] == 2
        assert len((run / name / "predictions.jsonl").read_text().splitlines()) == 2
    assert (run / "report" / "index.html").is_file()
    assert set(summary["stages"]) >= {"data", "test data", "verifier", "warm start", "rl", "eval before", "eval after",
                                      "test before", "test after"}
    assert not any(info["reused"] for name, info in summary["stages"].items() if name in ("data", "verifier", "warm start"))


def test_second_run_reuses_cached_stages(demo_run):
    tmp, cfg, first, second, logs = demo_run
    for stage in ("data", "verifier", "sft"):
        assert any(line.startswith(f"reusing {stage}:") for line in logs[1]), (stage, logs[1])
        assert not any(line.startswith(f"reusing {stage}:") for line in logs[0]), (stage, logs[0])
    assert all(second["stages"][s]["how"] == "reused from cache" for s in ("data", "verifier", "warm start"))
    assert second["table"] == first["table"]  # the finished RL run and the evaluations are read back
    assert second["paths"]["verifier"] == first["paths"]["verifier"]
    # validation, test, the search check's set, verifier, sft; no temporary directory
    assert len(list(Path(cfg.cache_dir).iterdir())) == 5
    assert second["search"] == first["search"]  # its evaluations are read back too


def test_smoke_search_check_evaluates_each_listed_policy(demo_run):
    """The search check writes its own test set of the distractor level and one evaluation per listed policy."""
    tmp, cfg, summary, _, _ = demo_run
    search = summary["search"]
    assert search["set"] == {"level": "pattern_distractors", "n": 2, "seed": 2_000_003, "data": search["set"]["data"]}
    assert Path(search["set"]["data"]).is_dir() and search["set"]["data"] != summary["paths"]["test"]
    (row,) = search["rows"]
    assert row["policy"] == cfg.search.policies[0]
    metrics = json.loads((Path(row["eval"]) / "metrics.json").read_text())
    assert metrics["tools"]["n"] == 2 and row["accuracy"] == metrics["tools"]["accuracy"]
    md = (tmp / "run" / "summary.md").read_text()
    assert "## Where to look: `pattern_distractors` test set (2 samples, seed 2000003)" in md
    assert f"| `{row['policy']}` | {row['accuracy']:.3f} |" in md


def test_search_check_refuses_bad_settings(tmp_path):
    from mapo.pipelines.demo_config import PipelineConfig
    from mapo.pipelines.search_check import search_check_stage

    with pytest.raises(ValueError, match="search.level must be one of"):
        from_dict(PipelineConfig, {"search": {"level": "nope"}})
    with pytest.raises(ValueError, match="search.n must be >= 1"):
        from_dict(PipelineConfig, {"search": {"n": 0}})
    for bad, why in (("shipped:nope", "no shipped checkpoint"), (str(tmp_path), "not a policy checkpoint directory")):
        cfg = from_dict(PipelineConfig, {"search": {"policies": [bad]}})
        with pytest.raises(ValueError, match=why):
            search_check_stage(cfg, tmp_path, None, tmp_path / "out", synth_set=lambda spec, name: (tmp_path, True),
                               evaluate=lambda *a: pytest.fail("evaluated a bad policy"), log=lambda _: None)


def test_cache_key_ignores_speed_knobs_and_tracks_the_rest():
    from mapo.pipelines.stage_cache import config_key
    from mapo.verifier.train import VerifierTrainConfig

    base = VerifierTrainConfig()
    assert config_key(base) == config_key(VerifierTrainConfig(num_threads=7))
    assert config_key(base) != config_key(VerifierTrainConfig(steps=base.steps + 1))
    assert len(config_key(base)) == 12


def test_cached_stage_is_atomic(tmp_path):
    from mapo.pipelines.stage_cache import cached_stage

    def broken(tmp: Path) -> None:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_stage("s", {"a": 1}, broken, tmp_path, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory
    path, reused = cached_stage("s", {"a": 1}, lambda tmp: (tmp / "ok.txt").write_text("y"), tmp_path, log=lambda _: None)
    assert not reused and (path / "ok.txt").read_text() == "y" and (path / "stage.json").is_file()
    again, reused = cached_stage("s", {"a": 1}, lambda tmp: pytest.fail("rebuilt"), tmp_path, log=lambda _: None)
    assert reused and again == path


def test_bad_config_is_rejected_with_a_reason(tmp_path):
    from mapo.pipelines.demo_config import PipelineConfig

    with pytest.raises(ValueError, match="rl.policy is set by the pipeline"):
        from_dict(PipelineConfig, {"rl": {"policy": "x"}})
    with pytest.raises(ValueError, match="unknown config key"):
        from_dict(PipelineConfig, {"rl": {"stepz": 3}})
    with pytest.raises(ValueError, match="data.n must be >= 1"):
        from_dict(PipelineConfig, {"data": {"n": 0}})
    with pytest.raises(ValueError, match=r"test.seed \(1000003\) must differ from the validation seed"):
        from_dict(PipelineConfig, {"test": {"seed": 1_000_003}})
    with pytest.raises(ValueError, match="the training seed rl.data.seed"):
        from_dict(PipelineConfig, {"test": {"seed": 5}, "rl": {"data": {"seed": 5}}})
    assert from_dict(PipelineConfig, {"test": {"n": 0, "seed": 1_000_003}}).test_spec() is None  # no test set


def test_refuses_a_directory_it_did_not_write(tmp_path):
    from mapo.pipelines.demo import run_pipeline
    from mapo.pipelines.demo_config import PipelineConfig

    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match="not written by `mapo demo`"):
        run_pipeline(PipelineConfig(cache_dir=str(tmp_path / "cache")), tmp_path, fresh=True)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_warm_start_path_must_be_a_checkpoint(tmp_path):
    from mapo.pipelines.demo import warmstart_stage
    from mapo.pipelines.demo_config import PipelineConfig

    cfg = from_dict(PipelineConfig, {"warmstart": {"source": str(tmp_path / "nope")}})
    with pytest.raises(ValueError, match="not a policy checkpoint directory"):
        warmstart_stage(cfg, log=lambda _: None)


def test_verdict_is_honest_about_noise():
    from mapo.metrics.before_after import verdict

    def rows(before, after):
        return [{"key": "accuracy", "before": before, "after": after}]

    # n=48, p=0.5 both: 2 SE = 2 * sqrt((0.25 + 0.25) / 48) = 0.204 -> +0.1 is noise, +0.3 is not.
    assert verdict(rows(0.5, 0.6), 48).startswith("no accuracy change beyond noise")
    assert verdict(rows(0.4, 0.7), 48).startswith("RL improved")
    assert verdict(rows(0.7, 0.4), 48).startswith("RL made held-out accuracy worse")


def test_demo_config_file_loads():
    from mapo.pipelines.demo_config import load_pipeline_config

    cfg = load_pipeline_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert to_dict(cfg)["rl"]["advantage"]["estimator"] == "mapo"


def test_warm_start_can_name_a_shipped_checkpoint(tmp_path):
    """'shipped:NAME' is mapo/assets/NAME after its manifest check; an unknown name or a path escape is refused."""
    from mapo.pipelines.demo import warmstart_stage
    from mapo.pipelines.demo_config import PipelineConfig
    from mapo.policy import default

    cfg = from_dict(PipelineConfig, {"warmstart": {"source": "shipped:warmstart_scan"}})
    path, how, reused = warmstart_stage(cfg, log=lambda _: None)
    assert (path, how, reused) == (default.SCAN_DIR, "shipped", True)
    for bad in ("shipped:nope", "shipped:../warmstart"):
        cfg = from_dict(PipelineConfig, {"warmstart": {"source": bad}})
        with pytest.raises(ValueError, match="no shipped checkpoint"):
            warmstart_stage(cfg, log=lambda _: None)
