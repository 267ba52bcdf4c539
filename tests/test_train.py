"""``mapo train``: smoke runs of every algorithm, bad input, non-finite updates, and SIGKILL + resume.

The policy is a 1-layer tiny Qwen2.5-VL whose tokenizer is trained on a handful of
texts (building it takes under a second), the verifier a random-weight tiny CLIP.
A random policy never calls the tool, so training rollouts use the rollout's
``forced_turns`` hook: member 0 of every group zooms and then describes and
answers; member 1 zooms and then samples freely; the rest is sampled.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mapo.agent import protocol
from mapo.core.config import from_dict, load_config
from mapo.data import synth
from mapo.train.metrics_log import read_metrics
from tiny_assets import FORCED_ANSWER, FORCED_ZOOM, LEVEL

TESTS = Path(__file__).parent
TIME_KEYS = ("time_",)


# ----------------------------------------------------------------------------- fixtures


def forced(group: int, member: int, turn: int) -> str | None:
    """Scripted turns (see the module docstring); None = sample the turn."""
    if member == 0:
        return [FORCED_ZOOM, FORCED_ANSWER][turn] if turn < 2 else None
    if member == 1 and turn == 0:
        return protocol.render_assistant_turn(bbox=(56, 56, 112, 112), label="blue circle")
    return None


def base_config(policy_dir: Path, verifier_dir: Path | None, **overrides) -> dict:
    cfg = dict(
        policy=str(policy_dir), verifier=str(verifier_dir) if verifier_dir else None, steps=2, prompts_per_step=2,
        seed=0, rollout=dict(group_size=2, max_turns=2, max_new_tokens_per_turn=48, batch_size=8),
        optim=dict(lr=1e-3, warmup_frac=0.0), micro_batch_size=2, eval_every=0, save_every=0,
        data=dict(n_eval=1), tensorboard=False, threads=1,
    )
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def assets(tiny_policy_dir, tiny_verifier_dir):
    return tiny_policy_dir, tiny_verifier_dir


def rl_config(assets, **overrides):
    from mapo.train.rl import RLConfig

    return from_dict(RLConfig, base_config(*assets, **overrides))


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ----------------------------------------------------------------------------- smoke runs


EXPECTED = (
    "reward_mean", "reward_std", "accuracy", "tool_call_rate", "invalid_call_rate", "turns_mean", "iou_mean", "hit_rate",
    "semantic_mean", "semantic_std", "description_missing_rate", "adv_var_tool_tokens", "grad_norm",
    "grad_var_bootstrap", "clip_frac", "ppo_kl", "entropy", "time_rollout", "time_verifier", "time_update",
    "skipped_updates", "lr",
)


@pytest.mark.parametrize("algo", ["grpo", "mapo_gated", "reward_mix"])
def test_smoke_each_algo_changes_weights_and_logs_finite_metrics(assets, tmp_path, algo):
    # mapo itself runs (4 steps, with eval and checkpoints) in the resume test below.
    from mapo.train.rl import train

    steps = 2 if algo == "grpo" else 1  # grpo (with a KL reference) checks that several steps chain
    cfg = rl_config(
        assets, steps=steps, advantage=dict(estimator=algo), loss=dict(kl_coef=0.01) if algo == "grpo" else {}
    )
    summary = train(cfg, tmp_path / "run", progress=False, forced_turns=forced)
    assert summary["steps"] == steps and summary["skipped_updates"] == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_rows = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    for row in records:
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics at step {row['step']}: {bad}"
    missing = [k for k in EXPECTED if k not in train_rows[-1]]
    assert not missing, f"metrics not logged: {missing}"
    if algo == "grpo":
        assert "kl" in train_rows[-1]  # reference model loaded because kl_coef > 0
    assert train_rows[-1]["tool_call_rate"] > 0 and train_rows[-1]["grad_norm"] > 0
    assert any(k.startswith("eval/") for k in records[-1])
    start, final = weights(assets[0]), weights(tmp_path / "run" / "final")
    changed = [k for k in start if not torch.equal(start[k], final[k])]
    assert len(changed) > len(start) // 2, f"only {len(changed)}/{len(start)} tensors changed"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == steps


def test_cli_grpo_without_verifier_on_a_vstar_folder_then_resume(assets, tmp_path, capsys):
    """`mapo train` in-process: --algo, overrides, a data source with its held-out tail, --resume."""
    import yaml

    from mapo.cli import main
    from mapo.data.writers import write_vstar

    write_vstar(synth.generate(5, seed=3, config=LEVEL), tmp_path / "vstar")
    raw = base_config(assets[0], None, steps=1, bootstrap_every=0, data=dict(source=str(tmp_path / "vstar"), n_eval=2))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    rc = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), "--algo", "grpo", "--no-progress",
               "rollout.max_new_tokens_per_turn=8"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert '"eval/n": 2.0' in out.out  # the last 2 of the 5 samples are held out
    assert "rl grpo step 1/1  reward " in out.err and " s/step  eta 0s" in out.err  # --no-progress: plain lines
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["advantage"]["estimator"] == "grpo" and saved["rollout"]["max_new_tokens_per_turn"] == 8
    row = read_metrics(run / "metrics.jsonl")[0]
    assert "semantic_mean" not in row and "iou_mean" in row  # no verifier; V* carries target boxes
    lines = (run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--no-progress", "log_every=2"]) == 0  # finished: nothing to redo
    assert (run / "metrics.jsonl").read_text() == lines
    assert f"resuming {run} from step 1 of 1" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress", "optim.lr=0.5"]) == 2
    assert "config differs at: optim.lr" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "x"), "--algo", "mapo"]) == 2
    assert "'mapo' needs semantic scores" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


def test_unknown_config_key_is_refused(tmp_path):
    from mapo.train.rl import RLConfig

    path = tmp_path / "c.yaml"
    path.write_text("policy: x\nsteps: 2\nrollout:\n  group_sise: 4\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) rollout.group_sise"):
        load_config(RLConfig, path)


@pytest.mark.parametrize("algo", ["mapo", "mapo_gated", "reward_mix"])
def test_semantic_algorithms_need_a_verifier(assets, algo):
    with pytest.raises(ValueError, match=f"{algo}' needs semantic scores: set verifier"):
        rl_config((assets[0], None), advantage=dict(estimator=algo))


def test_invalid_combinations_are_refused(assets):
    with pytest.raises(ValueError, match="minibatches .3. must divide"):
        rl_config(assets, minibatches=3)
    with pytest.raises(ValueError, match="policy is required"):
        rl_config(assets, policy=None)
    with pytest.raises(ValueError, match="greedy must be false"):
        rl_config(assets, rollout=dict(greedy=True))


def test_wrong_kind_of_directory_stops_at_start(assets, tmp_path):
    from mapo.train.rl import train

    policy_dir, verifier_dir = assets
    with pytest.raises(ValueError, match="not a policy checkpoint directory: missing"):
        train(rl_config(assets, policy=str(verifier_dir)), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="not a CLIP model directory: config.json has model_type='qwen2_5_vl'"):
        train(rl_config(assets, verifier=str(policy_dir)), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="is not a directory"):
        train(rl_config(assets, policy=str(tmp_path / "nowhere")), tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_data_source_without_usable_samples_stops_at_start(assets, tmp_path):
    from mapo.train.rl import train

    tsv = tmp_path / "empty.tsv"
    tsv.write_text("index\tquestion\tA\tB\tC\tD\tanswer\tcategory\tcycle_category\timage\n")
    with pytest.raises(ValueError, match="yields no usable samples"):
        train(rl_config(assets, data=dict(source=str(tsv))), tmp_path / "run", progress=False)


def test_run_dir_of_another_run_is_not_overwritten_and_resume_needs_a_checkpoint(assets, tmp_path):
    from mapo.train.rl import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("someone else's files")
    with pytest.raises(ValueError, match="not empty"):
        train(rl_config(assets), run, progress=False)
    assert (run / "notes.txt").read_text() == "someone else's files"
    with pytest.raises(ValueError, match="not a run directory"):
        train(rl_config(assets), run, resume=True, progress=False)
    fresh = tmp_path / "fresh"
    from mapo.core.run_dir import prepare_run_dir

    prepare_run_dir(fresh, rl_config(assets), kind="rl", resume=False)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        train(rl_config(assets), fresh, resume=True, progress=False)
    (fresh / "checkpoints" / "step_000001").mkdir(parents=True)  # a checkpoint, to get past that check
    (fresh / "checkpoints" / "step_000001" / "state.json").write_text('{"step": 1}')
    with pytest.raises(ValueError, match=r"holds a different run \(config differs at: optim.lr\)"):
        train(rl_config(assets, optim=dict(lr=5e-4)), fresh, resume=True, progress=False)


# ----------------------------------------------------------------------------- non-finite updates


def test_apply_update_skips_non_finite_gradients_without_touching_weights():
    from mapo.train.rl_step import apply_update

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(1, 3)).sum().backward()
    model.weight.grad[0, 0] = float("nan")
    norm, skipped = apply_update(model, opt, 1.0, loss=0.5)
    assert skipped and not math.isfinite(norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state and all(p.grad is None for p in model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    norm, skipped = apply_update(model, opt, 1.0, loss=float("inf"))  # finite grads, bad loss: skipped too
    assert skipped and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model(torch.ones(1, 3)).sum().backward()
    norm, skipped = apply_update(model, opt, 1.0, loss=0.5)
    assert not skipped and math.isfinite(norm) and not torch.equal(before[0], model.weight)


def test_non_finite_loss_is_skipped_and_counted_in_a_run(assets, tmp_path, monkeypatch):
    import mapo.train.rl as rl
    import mapo.train.rl_step as rl_step

    real = rl_step.policy_loss

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * float("nan"), metrics

    monkeypatch.setattr(rl_step, "policy_loss", poisoned)
    cfg = rl_config(assets, advantage=dict(estimator="grpo"), bootstrap_every=0, minibatches=2)
    summary = rl.train(cfg, tmp_path / "run", progress=False, forced_turns=forced)
    assert summary["skipped_updates"] == 4  # 2 steps x 2 mini-batches
    start, final = weights(assets[0]), weights(tmp_path / "run" / "final")
    assert all(torch.equal(start[k], final[k]) for k in start), "a skipped update changed the weights"
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "skipped_updates" in r]
    assert [r["skipped_updates"] for r in rows] == [2.0, 4.0]


# ----------------------------------------------------------------------------- SIGKILL and resume


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import test_train as t
    from mapo.core.config import from_dict
    from mapo.train.rl import RLConfig, train
    cfg = from_dict(RLConfig, json.loads({cfg!r}))
    train(cfg, {run!r}, progress=False, forced_turns=t.forced)
    """
)


def _comparable(records):
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(TIME_KEYS)} for r in records if "reward_mean" in r}


def test_sigkill_then_resume_gives_the_uninterrupted_metrics(assets, tmp_path):
    from mapo.train.rl import train

    raw = base_config(*assets, steps=3, save_every=1, eval_every=2, data=dict(n_eval=1))
    cfg = rl_config(assets, steps=3, save_every=1, eval_every=2, data=dict(n_eval=1))
    train(cfg, tmp_path / "straight", progress=False, forced_turns=forced)
    reference = _comparable(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert sorted(reference) == [1, 2, 3]

    killed = tmp_path / "killed"
    script = CHILD.format(tests=str(TESTS), cfg=json.dumps(raw), run=str(killed))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if (killed / "checkpoints" / "latest").is_file():  # step 1 is checkpointed; step 2 under way
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the child ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = max(r["step"] for r in read_metrics(metrics))
    assert done_before < 3, "the run finished before the kill; nothing left to resume"

    summary = train(cfg, killed, resume=True, progress=False, forced_turns=forced)
    assert summary["steps"] == 3
    resumed = _comparable(read_metrics(metrics))
    assert sorted(resumed) == [1, 2, 3]
    for step in resumed:
        for key, value in reference[step].items():
            assert resumed[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)
    start, a, b = weights(assets[0]), weights(tmp_path / "straight" / "final"), weights(killed / "final")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert any(not torch.equal(start[k], a[k]) for k in a)
    assert not list((killed / "checkpoints").glob(".*.tmp"))


def test_bootstrap_projection_matches_autograd_on_the_policy(assets, tmp_path):
    """sum_i p_i (per-trajectory projections) equals grad(L) . v of the whole batch's policy-gradient loss."""
    import mapo.train.rl as rl
    from mapo.algo.loss import policy_loss
    from mapo.train import diagnostics
    from mapo.train.rl_step import collect, gradient_variance
    from mapo.engine.trajectory import collate, sequence_logprobs

    run = rl.setup(rl_config(assets), tmp_path / "run", resume=False)
    try:
        got = collect(run, forced)
        assert got.metrics["tool_call_rate"] > 0 and got.advantages.abs().sum() > 0
        estimate = gradient_variance(run, got.batch, got.advantages)
        model = run.policy.model
        batch = collate(got.trajectories, run.policy)
        logp, entropy = sequence_logprobs(model, batch, return_entropy=True)
        check_entropy(model, batch, entropy)
        loss, _ = policy_loss(logp, batch.old_logprobs, got.advantages, batch.loss_mask, config=run.cfg.loss)
        loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        v = diagnostics.random_direction(params, run.cfg.bootstrap_seed)
        exact = sum((p.grad * d).sum() for p, d in zip(params, v)).item()
    finally:
        run.logger.close()
    assert exact != 0 and estimate["grad_proj"] == pytest.approx(exact, rel=1e-4)
    assert estimate["grad_var_bootstrap"] > 0


def check_entropy(model, batch, entropy):
    """The entropy sequence_logprobs returns equals -sum p log p of the full next-token distribution."""
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits.float()  # (B, T, V)
        logits[..., batch.blocked_token_ids] = float("-inf")
        logp_all = torch.log_softmax(logits, dim=-1)
        full = -(logp_all.exp() * torch.nan_to_num(logp_all, neginf=0.0)).sum(-1)  # (B, T) at position t predicts t+1
    rows, cols = batch.loss_mask.nonzero(as_tuple=True)
    keep = cols > 0
    torch.testing.assert_close(entropy[rows[keep], cols[keep]].detach(), full[rows[keep], cols[keep] - 1],
                               rtol=1e-4, atol=1e-4)
    assert entropy[~batch.loss_mask].abs().max() == 0


def test_rl_prompts_the_policy_as_it_was_trained_and_its_checkpoints_keep_the_record(assets, tmp_path):
    import shutil

    import mapo.train.rl as rl
    from mapo.policy.load import read_protocol, write_protocol
    from mapo.train.checkpoint import latest_checkpoint
    from mapo.agent.protocol import ProtocolConfig

    short = ProtocolConfig(system_template="You can zoom in on the image with $tool_name.")
    policy_dir = tmp_path / "policy"
    shutil.copytree(assets[0], policy_dir)
    write_protocol(policy_dir, short)
    run = rl.setup(rl_config((policy_dir, assets[1]), save_every=1, steps=1), tmp_path / "run", resume=False)
    try:
        assert run.rollout_cfg.protocol == short
        rl.save(run)
    finally:
        run.logger.close()
    assert read_protocol(latest_checkpoint(tmp_path / "run") / "model") == short  # a resumed run resolves alike
