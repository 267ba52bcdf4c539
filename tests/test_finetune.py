"""``mapo train``'s ``finetune`` section: LoRA runs that save adapters only and resume exactly, full runs with a
frozen vision tower, gradient checkpointing that changes no number, and ``--resume`` that raises ``steps``.

The policy, verifier and scripted turns are tests/test_train.py's (a 1-layer tiny Qwen2.5-VL). The same
checks at the width of Qwen2.5-VL-3B are in tests/test_finetune_3b.py (slow).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mapo.core.config import from_dict
from mapo.train.metrics_log import read_metrics
from mapo.train.checkpoint import latest_checkpoint
from mapo.train.finetune import FinetuneConfig
from test_train import _comparable, forced, rl_config, weights

LORA = dict(method="lora", lora_r=4, lora_alpha=8)
CONSTANT = dict(lr=1e-3, warmup_frac=0.0, schedule="constant")


@pytest.fixture(scope="module")
def assets(tiny_policy_dir, tiny_verifier_dir):
    return tiny_policy_dir, tiny_verifier_dir


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


FAST = dict(bootstrap_every=0, data=dict(n_eval=0))


def test_lora_run_saves_adapters_only_and_resumes_with_raised_steps_to_the_uninterrupted_run(assets, tmp_path, capsys):
    """2 LoRA steps straight vs 1 step then `--resume` with steps=2 (constant schedule): the same metrics and
    adapter; checkpoints hold the adapter and its optimizer state only; steps cannot go below what is done."""
    import yaml

    from mapo.policy import load_policy
    from mapo.train.rl import train

    two = rl_config(assets, steps=2, save_every=1, optim=CONSTANT, finetune=LORA, **FAST)
    one = rl_config(assets, steps=1, save_every=1, optim=CONSTANT, finetune=LORA, **FAST)
    train(two, tmp_path / "straight", progress=False, forced_turns=forced)

    ckpt = latest_checkpoint(tmp_path / "straight") / "model"
    names = sorted(p.name for p in ckpt.iterdir())
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names, names
    record = json.loads((ckpt / "adapter_config.json").read_text())
    assert record["base_model_name_or_path"] == str(assets[0].resolve())  # absolute: loads from any folder
    adapter = _adapter(tmp_path / "straight" / "final")
    assert adapter and all("lora_" in k for k in adapter)
    assert not any("visual" in k for k in adapter)  # the vision tower never gets adapters
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0: moved
    trainer = torch.load(latest_checkpoint(tmp_path / "straight") / "trainer.pt", weights_only=True)
    moments = sum(s["exp_avg"].numel() for s in trainer["optimizer"]["state"].values())
    assert moments == sum(v.numel() for v in adapter.values())  # optimizer state of the adapters alone

    # The final adapter loads on its base, and changes the base's weights once merged.
    policy = load_policy(tmp_path / "straight" / "final")
    assert policy.protocol is not None
    base = load_policy(assets[0]).model.state_dict()
    merged = policy.model.merge_and_unload().state_dict()
    q = next(k for k in base if "language_model" in k and k.endswith("q_proj.weight"))
    assert not torch.equal(merged[q], base[q])

    train(one, tmp_path / "extended", progress=False, forced_turns=forced)
    summary = train(two, tmp_path / "extended", resume=True, progress=True, forced_turns=forced)
    assert summary["steps"] == 2 and "steps 1 -> 2" in capsys.readouterr().err
    a, b = _comparable(read_metrics(tmp_path / "straight" / "metrics.jsonl")), _comparable(
        read_metrics(tmp_path / "extended" / "metrics.jsonl"))
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        for key, value in a[step].items():
            assert b[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)
    resumed = _adapter(tmp_path / "extended" / "final")
    assert all(torch.allclose(adapter[k], resumed[k], rtol=0, atol=1e-7) for k in adapter)
    assert yaml.safe_load((tmp_path / "extended" / "config.yaml").read_text())["steps"] == 2  # a plain --resume: 2
    with pytest.raises(ValueError, match="steps=1 is below the 2 steps"):
        train(one, tmp_path / "extended", resume=True, progress=False, forced_turns=forced)


def test_raised_steps_run_at_the_final_rate_of_the_original_schedule(assets, tmp_path):
    import mapo.train.rl as rl
    from mapo.train.optim import lr_factor

    optim = dict(lr=1e-3, warmup_frac=0.0, schedule="linear", min_lr_ratio=0.25)
    rl.train(rl_config(assets, steps=1, save_every=1, optim=optim, **FAST), tmp_path / "run", progress=False,
             forced_turns=forced)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["lr"]
    assert first == pytest.approx(1e-3 * lr_factor(0, 1, rl_config(assets, optim=optim).optim))
    run = rl.setup(rl_config(assets, steps=3, save_every=1, optim=optim, **FAST), tmp_path / "run", resume=True)
    try:
        assert run.step == 1 and run.schedule_steps == 1
        # The 1-step horizon is kept: steps 2 and 3 run at its end, 0.25 * lr.
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
        run.scheduler.step()
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    finally:
        run.logger.close()


def test_gradient_checkpointing_changes_no_number_and_freeze_vision_keeps_the_tower(assets, tmp_path):
    """A plain step vs a step with checkpointing and the vision tower frozen: freezing does not change the
    language model's gradients (AdamW is per weight), so its weights must agree; the tower must not move."""
    from mapo.train.rl import train

    runs = {}
    for name, finetune in (("plain", {}), ("checkpointed", dict(gradient_checkpointing=True, freeze_vision=True))):
        train(rl_config(assets, steps=1, finetune=finetune, **FAST), tmp_path / name, progress=False,
              forced_turns=forced)
        runs[name] = weights(tmp_path / name / "final")
    start, plain, checkpointed = weights(assets[0]), runs["plain"], runs["checkpointed"]
    vision = [k for k in start if k.startswith("visual.")]  # the checkpoint's names (Qwen's release layout)
    text = [k for k in start if not k.startswith("visual.")]
    assert vision and text
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=0, atol=1e-7) for k in text)
    assert any(not torch.equal(plain[k], start[k]) for k in text)
    assert all(torch.equal(checkpointed[k], start[k]) for k in vision)
    assert any(not torch.equal(plain[k], start[k]) for k in vision)


def test_full_fine_tuning_loads_bfloat16_checkpoints_as_float32_master_weights(assets, tmp_path):
    import mapo.train.rl as rl
    from mapo.policy import load_policy

    bf16 = tmp_path / "bf16"
    policy = load_policy(assets[0], dtype="bfloat16")
    policy.save(bf16)
    for finetune, dtype in (({}, torch.float32), (LORA, torch.bfloat16)):
        run = rl.setup(rl_config((bf16, assets[1]), finetune=finetune), tmp_path / f"run_{dtype}", resume=False)
        try:
            trainable = {p.dtype for p in run.policy.model.parameters() if p.requires_grad}
            frozen = {p.dtype for p in run.policy.model.parameters() if not p.requires_grad}
        finally:
            run.logger.close()
        assert trainable == {torch.float32}  # what AdamW updates is float32 either way
        assert frozen == (set() if dtype == torch.float32 else {torch.bfloat16})  # a LoRA base keeps its dtype


def test_finetune_config_refuses_bad_values():
    from mapo.train.rl import RLConfig

    for bad, message in ((dict(method="qlora"), "full or lora"), (dict(lora_r=0), "lora_r"),
                         (dict(lora_dropout=1.0), "lora_dropout"), (dict(lora_targets=[]), "lora_targets")):
        with pytest.raises(ValueError, match=message):
            FinetuneConfig(**bad)
    with pytest.raises(ValueError):
        from_dict(RLConfig, {"policy": "default", "finetune": {"method": "lora", "rank": 8}})


def test_a_lora_run_can_start_from_a_lora_policy_and_keeps_its_adapter(assets, tmp_path):
    """`policy=RUN/final` of a LoRA run: training continues that adapter (its base stays the original)."""
    from mapo.train.rl import train

    cfg = rl_config(assets, steps=1, finetune=LORA, **FAST)
    train(cfg, tmp_path / "first", progress=False, forced_turns=forced)
    second = rl_config((tmp_path / "first" / "final", assets[1]), steps=1, finetune=LORA, **FAST)
    train(second, tmp_path / "second", progress=False, forced_turns=forced)
    first, again = _adapter(tmp_path / "first" / "final"), _adapter(tmp_path / "second" / "final")
    assert sorted(first) == sorted(again)
    assert any(not torch.equal(first[k], again[k]) for k in first)
    record = json.loads((tmp_path / "second" / "final" / "adapter_config.json").read_text())
    assert record["base_model_name_or_path"] == str(assets[0].resolve())


@pytest.mark.parametrize("name", ["qwen2_5_vl_7b", "qwen3_vl_8b"])
def test_real_model_configs_load_with_lora_and_checkpointing(name):
    from mapo.core.config import load_config
    from mapo.train.rl import RLConfig

    cfg = load_config(RLConfig, f"configs/{name}.yaml", ["policy=/models/x", "verifier=/models/clip", "data.source=/d"])
    assert cfg.finetune.method == "lora" and cfg.finetune.gradient_checkpointing and cfg.amp == "bf16"
    assert cfg.finetune.lora_dropout == 0.0 and cfg.loss.kl_coef == 0.0 and cfg.rollout.group_size == 8


def test_the_readme_rl_command_runs_on_a_data_folder_with_the_7b_config(assets, tmp_path, capsys):
    """configs/qwen2_5_vl_7b.yaml with the README's overrides (policy, verifier, data.source), shrunk to one
    CPU step of the tiny policy: LoRA, checkpointing, bf16 autocast and a V* folder as training data."""
    from mapo.cli import main
    from mapo.data import synth
    from mapo.data.writers import write_vstar
    from test_train import LEVEL

    write_vstar(synth.generate(4, seed=3, config=LEVEL), tmp_path / "vstar")
    run = tmp_path / "run"
    rc = main(["train", "--config", "configs/qwen2_5_vl_7b.yaml", "--out", str(run), "--no-progress",
               f"policy={assets[0]}", f"verifier={assets[1]}", f"data.source={tmp_path / 'vstar'}",
               "steps=1", "prompts_per_step=1", "rollout.group_size=2", "rollout.max_turns=2",
               "rollout.max_new_tokens_per_turn=16", "data.n_eval=1", "bootstrap_every=0", "device=cpu",
               "tensorboard=false", "threads=1"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert (run / "final" / "adapter_model.safetensors").is_file()
    row = [r for r in read_metrics(run / "metrics.jsonl") if "reward_mean" in r][0]
    assert row["step"] == 1 and row["grad_norm"] >= 0


def test_a_cuda_device_on_a_cpu_build_is_one_line_naming_the_gpu_install(monkeypatch):
    from mapo.train.rl_model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match="CPU build: install the CUDA build with `make setup GPU=cu128`") as e:
        resolve_device("cuda")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(ValueError, match="sees no GPU"):
        resolve_device("cuda:0")
