"""`mapo bench rollout`: a tiny end-to-end run of the command and its JSON output."""

from __future__ import annotations

import json

import pytest

from mapo.cli import main


def test_bench_rollout_command_writes_comparable_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "rollout", "--samples", "1", "--group-size", "2", "--batch-size", "2", "--max-new-tokens", "4",
            "--max-turns", "1", "--zoom-turns", "0", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "sequential" in printed
    data = json.loads(out.read_text())
    for mode, batch in (("batched", 2), ("sequential", 1)):
        run = data[mode]
        assert run["batch_size"] == batch and run["episodes"] == 2
        assert run["generated_tokens"] == 8  # 2 episodes x 1 turn x 4 tokens
        assert run["tokens_per_s"] == pytest.approx(run["generated_tokens"] / run["seconds"])
        assert run["peak_memory_mb"] > 0
    assert data["speedup"] == pytest.approx(data["batched"]["tokens_per_s"] / data["sequential"]["tokens_per_s"])


def test_bench_rollout_rejects_bad_sizes(capsys):
    assert main(["bench", "rollout", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
