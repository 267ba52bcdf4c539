"""Model backends (mapo.policy.backend): Qwen3-VL behind the rollout, deepstack in the feature cache,
the policy's patch factor in the tool, and the refusals at load."""

from __future__ import annotations

import json

import pytest
import torch

from mapo.agent import protocol
from mapo.data import synth
from mapo.data.task import tool_config_for
from mapo.policy import build_tiny_policy, load_policy
from mapo.policy.backend import Qwen3VLBackend, QwenVLBackend, backend_for
from mapo.engine.rollout import RolloutConfig, rollout
from mapo.agent.tools import ToolConfig
from mapo.engine.trajectory import collate, sequence_logprobs

torch.set_num_threads(1)

SAMPLES = synth.generate(2, seed=0, config="easy")
TOOL = tool_config_for(SAMPLES[0])  # 112 px view budget, 224 px observations
ZOOM = protocol.render_assistant_turn(think="look", bbox=(8, 8, 60, 60), label="the corner")
ANSWER = protocol.render_assistant_turn(description="a square", answer="A")


def _two_zooms(group: int, member: int, turn: int) -> str | None:
    return (ZOOM, ZOOM, ANSWER)[turn] if turn < 3 else None


@pytest.fixture(scope="module")
def qwen3():
    return build_tiny_policy("tiny", arch="qwen3_vl", tool_config=TOOL, seed=0, text_layers=2)


def _play(policy, batch_size: int = 3):
    config = RolloutConfig(group_size=2, max_turns=3, max_new_tokens_per_turn=64, tool=TOOL, batch_size=batch_size)
    return rollout(SAMPLES, policy, config, forced_turns=_two_zooms)


def test_qwen3_backend_is_chosen_and_its_factor_is_32(qwen3):
    backend = backend_for(qwen3.model)
    assert isinstance(backend, Qwen3VLBackend) and backend.factor == 32
    assert isinstance(backend_for(build_tiny_policy("tiny", text_layers=1).model), QwenVLBackend)
    # The tiny Qwen3-VL has deepstack features: the cache must carry them.
    pixel_values = qwen3.processor.image_processor(images=[SAMPLES[0].load_image().resize((96, 96))], return_tensors="pt")
    (features,) = backend.encode_images(pixel_values["pixel_values"], pixel_values["image_grid_thw"])
    assert features.embeds.shape == (9, 96)  # 96 px / 32 = 3 x 3 tokens, text width 96
    assert len(features.deepstack) == 2 and all(d.shape == (9, 96) for d in features.deepstack)


def test_qwen3_rollout_logprobs_equal_the_training_forward(qwen3):
    """Two zooms with the KV cache kept across turns and batches that mix episodes: the recorded
    log-probs equal one forward over the whole sequence."""
    trajectories = _play(qwen3)
    assert all(t.finish_reason == "answer" and len(t.tool_calls) == 2 for t in trajectories)
    # The view is smart-resized with the policy's factor (32), not the tool config's default (28).
    assert TOOL.factor == 28 and all(t.view_size == (96, 96) for t in trajectories)
    batch = collate(trajectories, qwen3)
    with torch.no_grad():
        logp = sequence_logprobs(qwen3.model, batch)
    mask = batch.loss_mask
    assert (logp - batch.old_logprobs)[mask].abs().max().item() < 1e-4


def test_dropping_deepstack_from_the_cache_breaks_the_equality(qwen3, monkeypatch):
    """The check above can fail: cached images fed without their deepstack features give other log-probs."""
    def without_deepstack(self, features):
        out = QwenVLBackend.encoder_outputs(self, features)
        if out is not None:
            out["image"].deepstack_features = [tuple(torch.zeros_like(f.embeds) for f in features)] * 2
        return out

    monkeypatch.setattr(Qwen3VLBackend, "encoder_outputs", without_deepstack)
    trajectories = _play(qwen3)
    batch = collate(trajectories, qwen3)
    with torch.no_grad():
        logp = sequence_logprobs(qwen3.model, batch)
    assert (logp - batch.old_logprobs)[batch.loss_mask].abs().max().item() > 1e-3


def test_qwen3_policy_saves_and_loads_with_its_own_processor(qwen3, tmp_path):
    qwen3.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "processor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    loaded = load_policy(tmp_path / "p")
    assert type(loaded.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(loaded.processor).__name__ == "ImageOnlyQwen3VLProcessor"
    assert loaded.processor.image_processor.patch_size == 16
    assert list(loaded.processor.image_processor.image_mean) == [0.5, 0.5, 0.5]


def test_unsupported_model_type_lists_the_supported_ones(qwen3, tmp_path):
    qwen3.save(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    cfg["model_type"] = "llava"
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"'llava' model; mapo supports the model types qwen2_5_vl, qwen2_vl, qwen3_vl"):
        load_policy(tmp_path / "p")
    with pytest.raises(ValueError, match="mapo supports the model types"):
        backend_for(torch.nn.Linear(2, 2))


def test_processor_whose_patch_disagrees_with_the_model_is_refused(qwen3, tmp_path):
    qwen3.save(tmp_path / "p")
    # A Qwen2.5-VL image processor next to a Qwen3-VL model (both files that may hold it).
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = tmp_path / "p" / name
        cfg = json.loads(path.read_text())
        (cfg[key] if key else cfg)["patch_size"] = 14
        path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="patch_size=14, merge_size=2 but the model's vision config has patch_size=16"):
        load_policy(tmp_path / "p")


def test_qwen2_5_tiny_processor_range_is_unchanged():
    """The factor-aware pixel range leaves Qwen2.5-VL's (28-px) processors as they were."""
    from mapo.policy.tiny import pixel_range

    assert pixel_range(TOOL, factor=28) == (12544, 50176)
    assert pixel_range(TOOL, factor=32) == (96 * 96, 50176)  # 112 px rounds down to 96 px at 32 px per token


def test_qwen3_tiny_pipeline_sft_then_rl_then_eval(tmp_path):
    """The whole pipeline on a tiny Qwen3-VL: SFT builds and trains it, RL updates it, eval scores it."""
    from safetensors.torch import load_file

    from mapo.cli import main
    from mapo.core.config import from_dict
    from mapo.train.rl import RLConfig, train
    from mapo.train.sft import SFTConfig, run_sft

    sft = from_dict(SFTConfig, {
        "steps": 2, "batch_size": 2, "log_every": 1, "eval_every": 0, "save_every": 0, "tensorboard": False,
        "progress": False, "policy": {"arch": "qwen3_vl", "overrides": {"text_layers": 1, "vision_depth": 2}},
        "data": {"n_train": 2, "jitter": 0.0, "wrong_first_zoom": 0.0},
        "optim": {"lr": 3e-3, "warmup_frac": 0.0, "schedule": "constant"},
        "eval": {"n_teacher_forced": 2, "n_rollout": 1, "max_turns": 2, "max_new_tokens_per_turn": 24},
    })
    run_sft(sft, tmp_path / "sft")
    start = tmp_path / "sft" / "final"
    assert json.loads((start / "config.json").read_text())["model_type"] == "qwen3_vl"

    rl = from_dict(RLConfig, dict(
        policy=str(start), verifier=None, steps=1, prompts_per_step=2, seed=0, advantage=dict(estimator="grpo"),
        rollout=dict(group_size=2, max_turns=2, max_new_tokens_per_turn=48, batch_size=4),
        optim=dict(lr=1e-3, warmup_frac=0.0), micro_batch_size=2, eval_every=0, save_every=0, data=dict(n_eval=1),
        tensorboard=False, threads=1,
    ))
    forced = lambda group, member, turn: (ZOOM, ANSWER)[turn] if member == 0 and turn < 2 else None  # noqa: E731
    summary = train(rl, tmp_path / "rl", progress=False, forced_turns=forced)
    assert summary["steps"] == 1 and summary["skipped_updates"] == 0
    before, after = load_file(str(start / "model.safetensors")), load_file(str(tmp_path / "rl" / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)

    out = tmp_path / "eval"
    assert main(["eval", "--data", "synth:2", "--model", str(tmp_path / "rl" / "final"), "--out", str(out),
                 "--no-progress", "rollout.max_new_tokens_per_turn=24", "rollout.max_turns=2"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["view_size"] == [96, 96] for r in records)  # 32-px view of the 112-px budget


# An exact 256 x 256 budget: a multiple of Qwen3-VL's 32 px, not of Qwen2.5-VL's 28 px (252 x 252 falls short).
EXACT_256 = ToolConfig(view_min_pixels=256 * 256, view_max_pixels=256 * 256, obs_min_pixels=256 * 256,
                       obs_max_pixels=256 * 256)


@pytest.fixture(scope="module")
def qwen3_256():
    """A tiny Qwen3-VL whose processor takes exactly 256 x 256 pixels, like the real one's minimum."""
    return build_tiny_policy("tiny", arch="qwen3_vl", tool_config=EXACT_256, seed=0, text_layers=1, vision_depth=1)


def test_eval_prepares_samples_for_the_policy_factor(tmp_path, qwen3_256):
    """`mapo eval` fits each image for 32 px on Qwen3-VL: a 448 x 448 image plays at 256 x 256, none is skipped."""
    from mapo.eval import EvalConfig, evaluate

    config = EvalConfig(tool_from_data=False, rollout=RolloutConfig(
        group_size=1, greedy=True, batch_size=2, max_turns=1, max_new_tokens_per_turn=4, tool=EXACT_256))
    result = evaluate("synth:2", tmp_path / "eval", policy=qwen3_256, config=config)
    assert result.metrics["broken_rows"] == 0 and result.metrics["skipped_rows"] == []
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["view_size"] for r in records] == [[256, 256], [256, 256]]


def test_training_prepares_samples_for_the_policy_factor(tmp_path, qwen3_256):
    """`mapo train` fits its prompts and held-out samples for 32 px on Qwen3-VL (no sample is skipped)."""
    from mapo.core.config import from_dict
    from mapo.train.rl import RLConfig, setup

    qwen3_256.save(tmp_path / "policy")
    cfg = from_dict(RLConfig, dict(
        policy=str(tmp_path / "policy"), steps=1, prompts_per_step=1, tool_from_data=False, tensorboard=False,
        advantage=dict(estimator="grpo"), data=dict(n_eval=2),
        rollout=dict(group_size=2, tool=dict(view_min_pixels=256 * 256, view_max_pixels=256 * 256,
                                             obs_min_pixels=256 * 256, obs_max_pixels=256 * 256)),
    ))
    run = setup(cfg, tmp_path / "rl", resume=False)
    assert run.data.skipped == {} and len(run.data.heldout) == 2
    assert run.data.prepare(run.data.prompts(0, 1)[0]).image.size == (448, 448)  # played as it is, at 256 x 256
