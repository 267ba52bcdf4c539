"""Run directories under bad input: pickled payloads, damaged checkpoints, two processes on one directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from mapo.core.run_dir import RunDirLock, prepare_run_dir
from mapo.train.checkpoint import CheckpointWarning, latest_checkpoint, load_trainer_state, save_checkpoint, verify_checkpoint
from mapo.train.optim import OptimConfig, build_optimizer, build_scheduler


def _save(run_dir: Path, step: int, model: torch.nn.Module, opt, sched) -> Path:
    def save_model(d: Path) -> None:
        d.mkdir()
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(d / "model.safetensors"))

    return save_checkpoint(run_dir, step, save_model=save_model, optimizer=opt, scheduler=sched,
                                  state={"cursor": step * 2}, keep_last=3)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with checkpoints at steps 1 and 2 of a tiny model."""
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimConfig())
    sched = build_scheduler(opt, OptimConfig(), 10)
    for step in (1, 2):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        _save(tmp_path, step, model, opt, sched)
    return tmp_path, opt, sched


class _Payload:
    """Unpickling this runs code (it stands for an os.system call)."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["MAPO_TEST_MARK"]),))


def test_trainer_state_holds_only_tensors_and_plain_containers(run_dir):
    root, opt, sched = run_dir
    ckpt = latest_checkpoint(root)
    blob = torch.load(ckpt / "trainer.pt", weights_only=True)  # raises if anything else were in it
    assert set(blob) == {"optimizer", "scheduler", "rng"}
    assert load_trainer_state(ckpt, opt, sched) == {"step": 2, "cursor": 4}


def test_a_pickled_payload_in_trainer_pt_is_refused_and_never_runs(run_dir, tmp_path, monkeypatch):
    root, opt, sched = run_dir
    mark = tmp_path / "ran"
    monkeypatch.setenv("MAPO_TEST_MARK", str(mark))
    ckpt = latest_checkpoint(root)
    blob = torch.load(ckpt / "trainer.pt", weights_only=True)
    blob["rng"]["extra"] = _Payload()
    torch.save(blob, ckpt / "trainer.pt")
    with pytest.raises(ValueError, match="refusing to load .*trainer.pt: it holds Python objects"):
        load_trainer_state(ckpt, opt, sched)
    assert not mark.exists()


@pytest.mark.parametrize("name", ["trainer.pt", "model/model.safetensors", "state.json"])
def test_a_truncated_file_in_the_latest_checkpoint_falls_back_to_the_previous_one(run_dir, name):
    root, opt, sched = run_dir
    path = root / "checkpoints" / "step_000002" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(CheckpointWarning, match=f"step_000002.*{Path(name).name}"):
        ckpt = latest_checkpoint(root)
    assert ckpt.name == "step_000001"
    assert load_trainer_state(ckpt, opt, sched)["step"] == 1


def test_an_altered_file_of_the_same_size_is_caught_by_its_hash(run_dir):
    root, _, _ = run_dir
    path = root / "checkpoints" / "step_000002" / "model" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "sha256" in verify_checkpoint(path.parent.parent)


def test_a_corrupt_state_json_is_named(run_dir):
    root, opt, sched = run_dir
    for step in (1, 2):
        (root / "checkpoints" / f"step_00000{step}" / "state.json").write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_checkpoint(root) is None
    assert any("step_000002/state.json is damaged" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="state.json is damaged"):
        load_trainer_state(root / "checkpoints" / "step_000002", opt, sched)


def test_a_corrupt_run_json_is_named(tmp_path):
    (tmp_path / "run.json").write_text("\x00\x01")
    with pytest.raises(ValueError, match="run.json is damaged"):
        prepare_run_dir(tmp_path, OptimConfig(), kind="sft", resume=True)


def test_a_second_lock_on_a_run_directory_is_refused_and_released_on_exit(tmp_path):
    with RunDirLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(ValueError, match=f"in use by process {os.getpid()}"):
            RunDirLock(tmp_path).acquire()
        # The lock file does not make a fresh run directory look used.
        prepare_run_dir(tmp_path, OptimConfig(), kind="sft", resume=False)
    assert not (tmp_path / ".lock").exists()
    RunDirLock(tmp_path).acquire().release()  # free again


def test_a_lock_left_by_a_killed_process_is_stale_and_taken_over(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from mapo.core.run_dir import RunDirLock
        RunDirLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by process {proc.pid}"):
            RunDirLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / ".lock").exists()  # left behind by kill -9
    lock = RunDirLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_sft_on_a_locked_run_directory_is_refused_before_any_work(tmp_path):
    from mapo.train.sft import SFTConfig, run_sft

    with RunDirLock(tmp_path):
        started = time.perf_counter()
        with pytest.raises(ValueError, match="in use by process"):
            run_sft(SFTConfig(steps=1), tmp_path)
        assert time.perf_counter() - started < 2
    assert not (tmp_path / "run.json").exists()


def test_a_second_train_resume_on_a_locked_run_directory_is_refused(tmp_path, capsys):
    from mapo.cli import main

    (tmp_path / "config.yaml").write_text("policy: default\nadvantage: {estimator: grpo}\n")
    with RunDirLock(tmp_path):
        assert main(["train", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err
