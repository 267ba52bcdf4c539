"""The pixel probe: how much of the answer a linear read of raw pixels gets from the view and the crop."""

from __future__ import annotations

import numpy as np
import pytest

from pixel_probe import main, pixel_probe, ridge_accuracy


def test_ridge_reads_a_separable_signal_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    signal = np.eye(4)[y] + 0.1 * rng.normal(size=(200, 4))
    assert ridge_accuracy(signal, y, 150, 4, lam=1.0) > 0.95
    noise = rng.normal(size=(200, 4))
    assert ridge_accuracy(noise, y, 150, 4, lam=1.0) < 0.5


def test_the_letter_colour_is_in_the_view_pixels():
    """The ink level's answer is readable from the view's raw pixels (docs/warmstart.md says so):
    the need to zoom there rests on the policy's no-tool accuracy, not on missing information."""
    out = pixel_probe("ink", n=48)
    assert out["classes"] == 4 and out["n"] == 48
    assert out["view_accuracy"] >= 0.8 and out["crop_accuracy"] >= 0.8


def test_cli_errors_are_one_line(capsys):
    assert main(["--level", "ink", "--n", "10"]) == 2
    assert "at least 40" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--n", "x"])
