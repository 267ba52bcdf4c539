"""mapo.verifier.default and the pipeline's verifier_source: the shipped tiny CLIP, its manifest, its refusals.

A tiny CLIP is trained for a few steps, packed with ``ship`` exactly as the real one is,
and the pipeline is pointed at it (``DEFAULT_DIR`` monkeypatched). The pipeline tests
replace the trainer with a recorder: whether the stage trains is what they check; real
training inside the pipeline is covered by tests/test_demo.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mapo.core.config import from_dict, load_config, to_dict
from mapo.core.shipped import sha256_of
from mapo.verifier import default
from mapo.verifier.train import VerifierTrainConfig

TINY = {
    "synth_level": "easy", "n_samples": 6, "crops_per_sample": 2, "hard_negatives": 1, "val_fraction": 0.34,
    "image_size": 28, "patch_size": 14, "vision_width": 32, "vision_layers": 1, "text_width": 32, "text_layers": 1,
    "heads": 2, "projection_dim": 16, "max_text_tokens": 16, "steps": 3, "batch_size": 8, "warmup_steps": 1,
    "num_threads": 1, "eval_candidates": 2,
}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """(asset dir, manifest, run dir): a tiny `mapo verifier train` run packed with `ship`."""
    from mapo.verifier.train import train_tiny_clip

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("verifier")
    train_tiny_clip(VerifierTrainConfig(**TINY), root / "run", progress=False)
    manifest = default.ship(root / "run", root / "asset", command="mapo verifier train --config X --out Y")
    return root / "asset", manifest, root / "run"


@pytest.fixture
def copy(shipped, tmp_path):
    """A private copy of the shipped directory, for tests that alter it."""
    shutil.copytree(shipped[0], tmp_path / "asset")
    return tmp_path / "asset"


# ----------------------------------------------------------------------------- ship and verify


def test_manifest_records_command_config_task_metrics_and_every_file_hash(shipped):
    path, manifest, run = shipped
    assert manifest["command"] == "mapo verifier train --config X --out Y"
    assert manifest["config"] == {**to_dict(VerifierTrainConfig()), **TINY}  # verifier_train.yaml, every knob
    assert manifest["metrics"] == json.loads((run / "metrics.json").read_text())["val"]
    assert manifest["training"]["steps"] == TINY["steps"]
    assert manifest["task"]["level"] == "easy" and manifest["task"] == default.task_of(VerifierTrainConfig(**TINY))
    assert set(manifest["files"]) == set(default.SHIPPED_FILES)
    for name, digest in manifest["files"].items():
        assert sha256_of(path / name) == digest == sha256_of(run / name)
    assert json.loads((path / default.MANIFEST).read_text()) == manifest
    assert default.verify(path) == manifest


def test_load_default_scores_like_the_trained_run(shipped):
    from mapo.verifier import load_verifier

    path, _, run = shipped
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    texts = ["a red circle with the letter A", "empty background"]
    assert torch.equal(default.load_default(path).score(texts, images), load_verifier(run).score(texts, images))


def test_an_altered_file_is_refused_with_the_rebuild_command(copy):
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(default.DefaultVerifierError, match="model.safetensors does not match") as err:
        default.load_default(copy)
    assert default.REBUILD_COMMAND in str(err.value)


def test_an_unlisted_file_a_missing_file_and_an_emptied_list_are_refused(copy):
    (copy / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(default.DefaultVerifierError, match="does not list: adapter_model.safetensors"):
        default.verify(copy)
    (copy / "adapter_model.safetensors").unlink()
    (copy / "tokenizer.json").unlink()
    with pytest.raises(default.DefaultVerifierError, match="missing tokenizer.json"):
        default.verify(copy)
    manifest = json.loads((copy / default.MANIFEST).read_text())
    (copy / default.MANIFEST).write_text(json.dumps({**manifest, "files": {}}))
    with pytest.raises(default.DefaultVerifierError, match="does not list .*model.safetensors"):
        default.verify(copy)
    (copy / default.MANIFEST).unlink()
    with pytest.raises(default.DefaultVerifierError, match="manifest.json missing"):
        default.verify(copy)


def test_ship_refuses_an_unfinished_run_and_a_directory_of_other_files(shipped, tmp_path):
    _, _, run = shipped
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(default.DefaultVerifierError, match="not a finished `mapo verifier train` run: missing metrics.json"):
        default.ship(unfinished, tmp_path / "out")
    (unfinished / "metrics.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(default.DefaultVerifierError, match="no held-out metrics"):
        default.ship(unfinished, tmp_path / "out")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(default.DefaultVerifierError, match=r"holds files .*\(notes.txt\)"):
        default.ship(run, precious)
    assert (precious / "notes.txt").read_text() == "mine" and not (precious / "model.safetensors").exists()


def test_the_shipped_verifier_matches_its_manifest_and_its_recipe():
    """The checkpoint in the package: unaltered, small, and trained by the documented command on today's task."""
    manifest = default.verify()
    total = sum((default.DEFAULT_DIR / name).stat().st_size for name in manifest["files"])
    assert total <= 5 * 2**20
    assert manifest["command"] == default.TRAIN_COMMAND and manifest["config_file"] == default.CONFIG_PATH
    recipe = load_config(VerifierTrainConfig, Path(__file__).parent.parent / default.CONFIG_PATH)
    assert default.training_config(manifest) == recipe
    # The synthetic level it was trained on still generates the same task (else: rebuild it).
    assert manifest["task"] == default.task_of(recipe)
    # The figure docs/verifier.md quotes for the shipped checkpoint (0.881, chance 1/16), to 3 decimals.
    metrics = manifest["metrics"]
    assert metrics["candidates"] == 16 and metrics["retrieval_top1"] == pytest.approx(0.881, abs=5e-4)


# ----------------------------------------------------------------------------- the pipeline's verifier_source


@pytest.fixture
def trainer(monkeypatch):
    """Replace the verifier trainer with one that records its configs and writes a marker."""
    calls: list[VerifierTrainConfig] = []

    def fake_train(config, out_dir, progress=False):
        calls.append(config)
        Path(out_dir, "trained.txt").write_text("x")

    monkeypatch.setattr("mapo.verifier.train.train_tiny_clip", fake_train)
    return calls


def pipeline(tmp_path: Path, **overrides):
    from mapo.pipelines.demo_config import PipelineConfig

    verifier = {**TINY, **overrides.pop("verifier", {})}
    return from_dict(PipelineConfig, {"cache_dir": str(tmp_path / "cache"), "verifier": verifier, **overrides})


def test_pipeline_uses_the_shipped_verifier_when_the_configs_match(shipped, tmp_path, monkeypatch, trainer):
    from mapo.pipelines.demo import _verifier_how, verifier_stage

    monkeypatch.setattr(default, "DEFAULT_DIR", shipped[0])
    cfg = pipeline(tmp_path, verifier={"num_threads": 2})  # a speed-only knob may differ
    logs: list[str] = []
    result = verifier_stage(cfg, log=logs.append)
    assert result == (shipped[0], True) and trainer == []
    assert not (tmp_path / "cache").exists()
    assert any(line.startswith(f"verifier: the shipped verifier {shipped[0]}") for line in logs), logs
    assert _verifier_how(cfg)(result) == "shipped checkpoint"


def test_pipeline_trains_when_the_configs_differ_and_says_why(shipped, tmp_path, monkeypatch, trainer):
    from mapo.pipelines.demo import _verifier_how, verifier_stage

    monkeypatch.setattr(default, "DEFAULT_DIR", shipped[0])
    cfg = pipeline(tmp_path, verifier={"steps": 4})
    logs: list[str] = []
    path, reused = verifier_stage(cfg, log=logs.append)
    assert trainer == [cfg.verifier] and not reused and (path / "trained.txt").is_file()
    assert path.parent == tmp_path / "cache"
    assert any("not using the shipped verifier (verifier.steps is 4, shipped 3)" in line for line in logs), logs
    assert _verifier_how(cfg)((path, reused)) == "ran"


def test_pipeline_trains_when_the_task_changed_since_shipping(copy, tmp_path, monkeypatch, trainer):
    from mapo.pipelines.demo import verifier_stage

    manifest = json.loads((copy / default.MANIFEST).read_text())
    manifest["task"]["canvas_size"] += 1  # as if the level's defaults had changed in the code (files untouched)
    (copy / default.MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(default, "DEFAULT_DIR", copy)
    logs: list[str] = []
    verifier_stage(pipeline(tmp_path), log=logs.append)
    assert len(trainer) == 1
    assert any("task differs" in line for line in logs), logs


def test_source_train_always_trains(shipped, tmp_path, monkeypatch, trainer):
    from mapo.pipelines.demo import verifier_stage

    monkeypatch.setattr(default, "DEFAULT_DIR", shipped[0])
    path, reused = verifier_stage(pipeline(tmp_path, verifier_source="train"), log=lambda _: None)
    assert len(trainer) == 1 and path.parent == tmp_path / "cache" and not reused


def test_an_altered_shipped_verifier_is_an_error_not_a_fallback(copy, tmp_path, monkeypatch, trainer):
    from mapo.pipelines.demo import verifier_stage

    (copy / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(default, "DEFAULT_DIR", copy)
    with pytest.raises(default.DefaultVerifierError, match="tokenizer.json does not match") as err:
        verifier_stage(pipeline(tmp_path), log=lambda _: None)
    assert default.REBUILD_COMMAND in str(err.value) and trainer == []


def test_no_shipped_verifier_trains_and_says_so(tmp_path, monkeypatch, trainer):
    from mapo.pipelines.demo import verifier_stage

    monkeypatch.setattr(default, "DEFAULT_DIR", tmp_path / "none")
    logs: list[str] = []
    verifier_stage(pipeline(tmp_path), log=logs.append)
    assert len(trainer) == 1 and any(line.startswith("no shipped verifier at") for line in logs), logs


def test_source_path_uses_that_directory_or_says_what_is_missing(shipped, tmp_path, trainer):
    from mapo.pipelines.demo import _verifier_how, verifier_stage

    _, _, run = shipped
    cfg = pipeline(tmp_path, verifier_source=str(run))
    result = verifier_stage(cfg, log=lambda _: None)
    assert result == (run, True) and trainer == [] and _verifier_how(cfg)(result) == "given checkpoint"
    with pytest.raises(ValueError, match="verifier_source .* is not a verifier directory: .*config.json is missing"):
        verifier_stage(pipeline(tmp_path, verifier_source=str(tmp_path)), log=lambda _: None)
    with pytest.raises(ValueError, match="verifier_source must be"):
        pipeline(tmp_path, verifier_source="")


@pytest.mark.parametrize("name", ["demo.yaml", "compare.yaml", "compare_150steps.yaml", "compare_distractors.yaml", "compare_search.yaml",
                                  "compare_search_fv.yaml"])
def test_the_configs_that_say_they_use_the_shipped_verifier_do(name):
    """A `verifier:` block that drifts from the shipped recipe would silently train a verifier (minutes) instead."""
    import yaml

    from mapo.pipelines.demo import _verifier_mismatch
    from mapo.pipelines.demo_config import PipelineConfig

    raw = yaml.safe_load((Path(__file__).parent.parent / "configs" / name).read_text())
    cfg = from_dict(PipelineConfig, raw.get("pipeline", raw))  # a compare nests its pipeline block
    assert _verifier_mismatch(cfg.verifier, default.verify()) is None
