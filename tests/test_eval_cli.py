"""``mapo eval`` inputs and failures: the `data synth` output root, no empty --out after a failure."""

from __future__ import annotations

import pytest

from mapo.cli import main
from mapo.eval import load_eval_samples


def test_eval_reads_the_data_synth_output_root(tmp_path):
    root = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(root), "--n", "3", "--format", "hrbench", "--workers", "1"]) == 0
    samples, report = load_eval_samples(str(root))
    assert len(samples) == 3 and report["format"] == "hrbench"
    assert main(["data", "synth", "--out", str(root), "--n", "3", "--format", "vstar", "--workers", "1"]) == 0
    assert load_eval_samples(str(root))[1]["format"] == "vstar"  # V* first when several were written


def _failing_eval(monkeypatch):
    """The policy loads; the first rollout crashes (after the eval directory was made)."""
    import mapo.policy
    import mapo.engine.rollout

    def crash(*args, **kwargs):
        raise RuntimeError("rollout crashed")

    monkeypatch.setattr(mapo.policy, "load_policy", lambda *a, **k: object())
    monkeypatch.setattr(mapo.engine.rollout, "rollout", crash)


def test_a_failed_first_eval_leaves_no_directory(tmp_path, monkeypatch, capsys):
    _failing_eval(monkeypatch)
    out = tmp_path / "eval"
    with pytest.raises(RuntimeError, match="rollout crashed"):
        main(["eval", "--data", "synth:2", "--model", "m", "--out", str(out), "--no-progress"])
    assert not out.exists()
    assert main(["eval", "--data", str(tmp_path / "missing"), "--model", "m", "--out", str(out)]) == 2
    assert not out.exists()


def test_a_failed_resume_keeps_the_directory(tmp_path, monkeypatch, capsys):
    _failing_eval(monkeypatch)
    out = tmp_path / "eval"
    out.mkdir()
    with pytest.raises(RuntimeError):
        main(["eval", "--data", "synth:2", "--model", "m", "--out", str(out), "--no-progress"])
    assert out.is_dir()  # it was there before this run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder with someone else's files is refused before any work
    assert main(["eval", "--data", "synth:2", "--model", "m", "--out", str(out), "--no-progress"]) == 2
    assert "holds files that mapo did not write (notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
