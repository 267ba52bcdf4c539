"""Ctrl-C during ``mapo train``: the step finishes, a checkpoint is written, the resume command is printed
(exit 130), and that command finishes the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from mapo.core.run_dir import read_json_file
from mapo.train.metrics_log import read_metrics
from mapo.train.checkpoint import latest_checkpoint
from mapo.train.interrupt import resume_command
from test_train import base_config

CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    import mapo.train.rl as rl
    from mapo.cli import main
    real = rl.rl_step
    def step(run, forced_turns=None):  # step 2 starts slowly: Ctrl-C lands inside it whatever the machine's speed
        if run.step == 1:
            time.sleep(2)
        return real(run, forced_turns)
    rl.rl_step = step
    sys.exit(main(["train", "--config", {cfg!r}, "--out", {run!r}, "--algo", "grpo", "--no-progress"]))
    """
)


def test_sigint_writes_a_checkpoint_and_prints_the_resume_command(tiny_policy_dir, tmp_path, capsys):
    from mapo.cli import main

    raw = base_config(tiny_policy_dir, None, steps=3, save_every=0, bootstrap_every=0, data=dict(n_eval=0),
                      rollout=dict(max_turns=1, max_new_tokens_per_turn=8))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(cfg=str(tmp_path / "c.yaml"), run=str(run))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and child.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():  # step 1 logged; step 2 under way (its start sleeps)
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the child ended before Ctrl-C: {child.stderr.read().decode()[-2000:]}"
    os.kill(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    err = err.decode()
    assert child.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    done = max(r["step"] for r in read_metrics(metrics))
    assert done == 2
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and read_json_file(ckpt / "state.json")["step"] == done  # no step lost
    assert f"interrupted after step {done} of 3" in err
    assert f"Resume with: {resume_command(run)}" in err
    assert not (run / "final").exists()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert sorted(r["step"] for r in read_metrics(metrics) if "reward_mean" in r) == [1, 2, 3]
    assert (run / "final").is_dir()


def test_resume_command_names_the_launcher():
    assert resume_command(Path("runs/rl")) == "mapo train --resume runs/rl"
    assert resume_command("runs/rl", world_size=4) == "torchrun --nproc-per-node 4 -m mapo train --resume runs/rl"
