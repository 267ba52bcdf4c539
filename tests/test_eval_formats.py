"""One sample, one option order: the shipped policy predicts the same on every file format as in memory.

The policy reads its answer letter off the options in the prompt, so a writer or reader that
reorders options (V* stores the correct one first) would change its predictions: this is the
public path (`mapo data synth --format F` -> `mapo eval`) checked against the in-memory one.
"""

from __future__ import annotations

import pytest
import torch

from mapo.data import synth
from mapo.data.benchmarks import FORMATS, write_samples
from mapo.eval import EvalConfig, evaluate
from mapo.policy.default import load_default
from mapo.metrics.records import read_jsonl

N, LEVEL, SEED = 6, "pattern", 1000003


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    return load_default()


def _predictions(data, out, policy) -> dict[str, tuple]:
    evaluate(data, out, policy=policy, config=EvalConfig(), progress=None)
    rows = read_jsonl(out / "predictions.jsonl")
    return {r.id: (tuple(r.options), r.answer, r.prediction, r.correct) for r in rows}


def test_every_file_format_gives_the_in_memory_predictions(tmp_path, policy):
    in_memory = _predictions(f"synth:{N}:{LEVEL}:{SEED}", tmp_path / "memory", policy)
    assert len(in_memory) == N
    # The options really are shuffled per sample (else a fixed order would pass trivially).
    assert len({options for options, *_ in in_memory.values()}) > 1
    paths = write_samples(synth.generate(N, SEED, LEVEL), tmp_path / "data", list(FORMATS))
    for fmt, path in paths.items():
        assert _predictions(path, tmp_path / f"eval-{fmt}", policy) == in_memory, fmt


def test_a_fixed_option_order_survives_every_format(tmp_path, policy):
    """Options not in the V* reader's seeded order (here: one fixed order) keep their letters too."""
    samples = synth.generate(N, SEED, synth.level_config(LEVEL, fixed_options=True))
    expected = {s.id: (tuple(s.options), s.answer) for s in samples}
    paths = write_samples(samples, tmp_path / "data", list(FORMATS))
    predictions = {fmt: _predictions(path, tmp_path / f"eval-{fmt}", policy) for fmt, path in paths.items()}
    for fmt, rows in predictions.items():
        assert {i: row[:2] for i, row in rows.items()} == expected, fmt
        assert rows == predictions["hrbench"], fmt
