from __future__ import annotations

from PIL import Image

from mapo.cli import main


def test_synth_show_check_from_the_cli(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--n", "6", "--level", "medium", "--format", "all", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "generated 6 samples" in printed and "2.75 view px" in printed
    assert (out / "synth_config.yaml").is_file()
    grid = tmp_path / "grid.png"
    assert main(["data", "show", str(out / "vstar"), "--n", "4", "--out", str(grid), "--cols", "2", "--thumb", "64"]) == 0
    assert Image.open(grid).size[0] == 2 * (64 + 8)
    assert main(["data", "check", str(out / "mme")]) == 0
    assert "loaded 6, skipped 0" in capsys.readouterr().out


def test_synth_set_overrides_are_typed_and_checked(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--show-config", "--set", "grid_lines=0.5"]) == 0
    assert "grid_lines: 0.5  #" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path), "--set", "glyph_px=30", "--n", "1"]) == 2
    assert "needs zooming" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--set", "nope=1", "--n", "1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
