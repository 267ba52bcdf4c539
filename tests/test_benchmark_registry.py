"""A benchmark format is one entry of mapo.data.benchmarks.FORMATS: reading, writing, detection, scoring and the CLI follow it."""

from __future__ import annotations

import argparse

from mapo.data import synth
from mapo.data.benchmarks import FORMATS, BenchmarkFormat, detect_format, load_samples, score, scorer_of, write_samples
from mapo.data.formats.mme import read_mme_realworld
from mapo.data.scoring import score_mme_realworld
from mapo.data.writers import write_mme_realworld


def test_a_new_format_needs_only_its_entry(tmp_path, monkeypatch):
    # A toy format: MME's reader and writer under another name and suffix.
    toy = BenchmarkFormat("Toy", read_mme_realworld, write_mme_realworld, ".toyjson", score_mme_realworld)
    monkeypatch.setitem(FORMATS, "toy", toy)
    samples = synth.generate(3, 7, synth.level_config("easy"))

    written = write_samples(samples, tmp_path, ["toy"])
    assert written["toy"] == tmp_path / "toy" / "data.toyjson"
    assert detect_format(written["toy"]) == "toy" and detect_format(tmp_path / "toy") == "toy"
    loaded = load_samples(tmp_path / "toy")
    assert [s.id for s in loaded] == [s.id for s in samples]
    assert scorer_of("toy") is score_mme_realworld
    result = score(loaded, {s.id: f"<answer>{s.answer}</answer>" for s in loaded}, benchmark="toy")
    assert result["overall"] == 1.0

    from mapo.cli import data as data_command

    parser = argparse.ArgumentParser()
    data_command.add_arguments(parser)
    assert parser.parse_args(["synth", "--out", str(tmp_path), "--format", "toy"]).format == "toy"


def test_every_format_round_trips_and_says_how_it_is_scored(tmp_path):
    samples = synth.generate(2, 3, synth.level_config("easy"))
    for name, fmt in FORMATS.items():
        path = write_samples(samples, tmp_path, [name])[name]
        assert detect_format(path) == name
        assert [s.id for s in load_samples(path)] == [s.id for s in samples]
        assert scorer_of(name) is fmt.score
    assert scorer_of("synth") is not None and scorer_of("unknown") is None
