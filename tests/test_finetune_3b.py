"""A LoRA run and a full run at the width of Qwen2.5-VL-3B (1 text layer, 1 vision block) train and resume on CPU.

The checkpoint is :func:`mapo.policy.real_shapes.write_release_dir`'s ``qwen2_5_vl_3b`` (real widths, the real
151,936-token embedding tied to the output layer, special tokens at their real ids, random weights). Each method
trains 1 step with a checkpoint, is resumed with ``steps`` raised to 2, and must log both steps and move its
weights in step 2. LoRA checkpoints must hold the adapter and its optimizer state only.

Slow (``make test-slow``): the full run holds ~0.45 B float32 weights with their gradients and AdamW moments and
writes a 5.4 GB checkpoint (model/ 1.8 GB, trainer.pt 3.6 GB; LoRA: 6.3 MB and 3.4 MB). Measured with
``/usr/bin/time -v pytest -m slow -s tests/test_finetune_3b.py``: 110 s of CPU, 13 GB peak resident memory.
"""

from __future__ import annotations

import json

import pytest
import torch

from mapo.train.metrics_log import read_metrics
from mapo.train.checkpoint import latest_checkpoint
from test_train import base_config, forced

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def release_3b(tmp_path_factory):
    from mapo.agent import protocol
    from mapo.policy.real_shapes import write_release_dir
    from tiny_assets import FORCED_ANSWER, FORCED_ZOOM

    torch.set_num_threads(2)
    corpus = [protocol.system_prompt(), FORCED_ZOOM, FORCED_ANSWER] * 3
    return write_release_dir("qwen2_5_vl_3b", tmp_path_factory.mktemp("r3b") / "ckpt", text_layers=1, vision_depth=1,
                             corpus=corpus)


def _bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_3b_width_run_trains_and_resumes(release_3b, tmp_path, method):
    import mapo.train.rl as rl
    from mapo.core.config import from_dict

    def config(steps):
        raw = base_config(release_3b, None, steps=steps, save_every=1, prompts_per_step=1, bootstrap_every=0,
                          # float32 on CPU: bfloat16 matmuls are slow on CPUs without bf16 units
                          policy_dtype="float32", advantage=dict(estimator="grpo"), micro_batch_size=1,
                          # an entropy bonus: a gradient even when a group's rewards tie (random weights)
                          loss=dict(entropy_coef=0.01),
                          rollout=dict(group_size=2, max_turns=2, max_new_tokens_per_turn=24, batch_size=2),
                          optim=dict(lr=1e-3, warmup_frac=0.0, schedule="constant"), data=dict(n_eval=0),
                          finetune=dict(method=method, lora_r=8, lora_alpha=16, gradient_checkpointing=True))
        return from_dict(rl.RLConfig, raw)

    run_dir = tmp_path / "run"
    rl.train(config(1), run_dir, progress=False, forced_turns=forced)
    ckpt = latest_checkpoint(run_dir)
    model_bytes, trainer_bytes = _bytes(ckpt / "model"), (ckpt / "trainer.pt").stat().st_size
    base_bytes = _bytes(release_3b)
    print(f"\n{method}: checkpoint model/ {model_bytes / 1e6:.1f} MB, trainer.pt {trainer_bytes / 1e6:.1f} MB "
          f"(base checkpoint, bf16: {base_bytes / 1e6:.1f} MB)")
    if method == "lora":
        assert (ckpt / "model" / "adapter_config.json").is_file()
        assert model_bytes < 0.05 * base_bytes and trainer_bytes < 0.05 * base_bytes
    else:
        assert json.loads((ckpt / "model" / "config.json").read_text())["model_type"] == "qwen2_5_vl"

    run = rl.setup(config(2), run_dir, resume=True)  # what --resume steps=2 builds, checked before training
    try:
        before = _trainable(run.policy.model)
        assert run.step == 1 and before
    finally:
        run.logger.close()
    del run
    summary = rl.train(config(2), run_dir, resume=True, progress=False, forced_turns=forced)
    assert summary["steps"] == 2 and summary["skipped_updates"] == 0
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 for r in rows)

    from mapo.policy import load_policy
    from mapo.train.finetune import FinetuneConfig, prepare_policy

    final = prepare_policy(load_policy(run_dir / "final", dtype="float32"), FinetuneConfig(method=method))
    after = _trainable(final.model)
    assert sorted(after) == sorted(before)
    assert any(not torch.equal(before[k], after[k]) for k in before), "step 2 did not move the trained weights"
