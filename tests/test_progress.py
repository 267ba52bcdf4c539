"""Progress that works in a log file: one plain line per step, a bar only on a terminal."""

from __future__ import annotations

import io
import re

import pytest

from mapo.core.progress import StepProgress, console, format_duration, format_line, resolve_mode
from mapo.data.task import tool_config_for


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_line_and_duration_by_hand():
    # 3 s/step with 38 steps left: eta 114 s = 1m54s.
    line = format_line("rl mapo", 12, 50, {"reward": 0.5312, "acc": 0.41}, 3.0)
    assert line == "rl mapo step 12/50  reward 0.531  acc 0.410  3.00 s/step  eta 1m54s"
    assert [format_duration(s) for s in (0, 42.4, 122, 3900)] == ["0s", "42s", "2m02s", "1h05m"]


def test_auto_is_lines_in_a_file_and_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    assert resolve_mode("auto", io.StringIO()) == "lines"
    assert resolve_mode(True, _Tty()) == "bar"
    assert resolve_mode(False, _Tty()) == "off" and resolve_mode("lines", _Tty()) == "lines"
    with pytest.raises(ValueError, match="progress must be one of auto, bar, lines, off"):
        resolve_mode("loud")


def test_lines_mode_prints_one_plain_line_per_reported_step():
    stream = io.StringIO()
    with StepProgress("sft", 5, start=1, mode="auto", every=2, stream=stream) as bar:
        for step in range(2, 6):
            bar.update(step, {"loss": 1.0 / step})
        bar.note("sft eval step 5: loss 0.100")
    lines = stream.getvalue().splitlines()
    # Steps 3 and 5 (every 2 from the resume point 1; the last step always), then the note; no carriage returns.
    assert [re.match(r"sft step (\d)/5  loss ", line).group(1) for line in lines[:2]] == ["3", "5"]
    assert all(" s/step  eta " in line for line in lines[:2]) and lines[2] == "sft eval step 5: loss 0.100"
    assert "\r" not in stream.getvalue()


def test_off_prints_nothing():
    stream = io.StringIO()
    with StepProgress("rl", 2, mode="off", stream=stream) as bar:
        bar.update(1, {"reward": 1.0})
        bar.note("eval")
    assert stream.getvalue() == ""


def test_tables_do_not_wrap_at_80_columns_in_a_file(capsys):
    from rich.table import Table

    table = Table("metric", "before", "after", "delta")
    table.add_row("a rather long metric name that would wrap at eighty columns", "0.123", "0.456", "+0.333")
    console().print(table)
    row = [line for line in capsys.readouterr().out.splitlines() if "rather long" in line]
    assert len(row) == 1 and "eighty columns" in row[0]


def test_eval_progress_in_a_file_is_one_line_per_chunk(capsys):
    from mapo.eval import ProgressLine

    line = ProgressLine(plain=True)
    for done in (0, 4, 8):
        line(done, 8)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 3 and err.splitlines()[-1].startswith("eval 8/8  ")
    assert "s/sample  eta 0s" in err.splitlines()[-1]


def test_verifier_training_reports_progress_lines(capsys):
    from mapo.data import synth
    from mapo.verifier.train import VerifierTrainConfig, train_on_pairs
    from mapo.verifier.pairs import synth_pairs

    level = synth.level_config("easy")
    pairs = synth_pairs(synth.generate(2, 0, level), 2, tool_config_for(level), 0)
    cfg = VerifierTrainConfig(vision_width=16, vision_layers=1, text_width=16, text_layers=1, heads=2, projection_dim=8,
                              image_size=32, patch_size=16, steps=4, batch_size=2, warmup_steps=1, num_threads=1)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        train_on_pairs(pairs, cfg, out, progress="lines")
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("verifier")]
    assert [line.split("  ")[0] for line in ours] == [f"verifier step {i}/4" for i in range(1, 5)]


def test_the_cli_silences_transformers_progress_bars(monkeypatch):
    """`mapo ...` sets HF_HUB_DISABLE_PROGRESS_BARS (read when transformers is imported) unless the user did."""
    import os

    from mapo.cli import main

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert main(["data", "synth", "--show-config"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert main(["data", "synth", "--show-config"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
