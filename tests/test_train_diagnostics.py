"""mapo.train.diagnostics: advantage metrics, semantic-score layout, and the gradient-variance estimate.

Trajectory metrics (reward, accuracy, IoU, hit) are tested with their module in tests/test_heldout.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mapo.algo import semantic
from mapo.agent.episode import ExecutedCall
from mapo.train import diagnostics as D

CROP = Image.new("RGB", (8, 8), (200, 0, 0))


def call(valid=True, box=(0.0, 0.0, 10.0, 10.0), label="red square"):
    return ExecutedCall(box, box if valid else None, box if valid else None, label, valid, None if valid else "bad box")


def traj(calls, descriptions, *, targets=((0.0, 0.0, 10.0, 10.0),), turns=1, finish="answer", errors=()):
    sample = SimpleNamespace(target_boxes=[SimpleNamespace(xyxy=b) for b in targets])
    return SimpleNamespace(
        sample=sample, tool_calls=list(calls), crops=[CROP if c.valid else None for c in calls],
        descriptions=list(descriptions), num_observations=len(calls), finish_reason=finish,
        turns=[SimpleNamespace(errors=tuple(errors))] + [SimpleNamespace(errors=())] * (turns - 1),
        num_generated=10,
    )


class LengthVerifier:
    """score(text, image) = len(text) / 100; records every call."""

    s_missing = -1.0

    def __init__(self):
        self.calls = []

    def score(self, texts, images, *, batch_size=64):
        self.calls.append(list(texts))
        return torch.tensor([len(t) / 100 for t in texts])


def test_semantic_scores_layout_missing_rules_and_one_call():
    trajectories = [
        traj([call(), call(valid=False)], ["abcd", "described but no crop"]),  # obs 2: error observation
        traj([call(), call(), call()], [None, "x" * 301, "  "]),  # missing, too long, blank
        traj([], []),
    ]
    v = LengthVerifier()
    sem = semantic.semantic_scores(trajectories, v, target="description", max_description_chars=300)
    nan = float("nan")
    expected = torch.tensor([[0.04, -1.0, nan], [-1.0, -1.0, -1.0], [nan, nan, nan]])
    torch.testing.assert_close(sem.scores, expected, equal_nan=True)
    assert len(v.calls) == 1 and v.calls[0] == ["abcd"]
    assert sem.description_missing.tolist() == [[False, False, False], [True, False, True], [False, False, False]]
    assert sem.description_too_long[1, 1] and sem.n_pairs == 1
    m = semantic.semantic_metrics(sem)
    # present scores: 0.04, -1, -1, -1, -1 -> mean -0.792; missing 2 of 5 observations, too long 1 of 5
    assert m["semantic_mean"] == pytest.approx(-0.792)
    assert m["description_missing_rate"] == pytest.approx(0.4) and m["description_too_long_rate"] == pytest.approx(0.2)


def test_per_observation_is_the_training_score_without_padding():
    trajectories = [traj([call(), call(valid=False)], ["abcd", "x"]), traj([], [])]
    sem = semantic.semantic_scores(trajectories, LengthVerifier(), max_description_chars=300)
    assert semantic.per_observation(sem, trajectories) == [[pytest.approx(0.04), -1.0], []]


def test_semantic_target_label_and_both():
    trajectories = [traj([call(label="red square")], ["abcd"])]
    label = semantic.semantic_scores(trajectories, LengthVerifier(), target="label")
    both = semantic.semantic_scores(trajectories, LengthVerifier(), target="both")
    assert label.scores[0, 0].item() == pytest.approx(0.10)  # len("red square") = 10
    assert both.scores[0, 0].item() == pytest.approx((0.04 + 0.10) / 2)
    with pytest.raises(ValueError, match="target must be one of"):
        semantic.semantic_scores(trajectories, LengthVerifier(), target="caption")


def test_tool_segment_mask_and_advantage_variance():
    trajectories = [traj([call(), call()], ["a", "b"]), traj([], [])]
    segment_ids = torch.tensor([[-1, 0, 0, -1, 1, -1, 2], [-1, 0, 0, 0, -1, -1, -1]])
    tool = D.tool_segment_mask(trajectories, segment_ids)
    assert tool.tolist() == [[False, True, True, False, True, False, False], [False] * 7]
    adv = torch.tensor([[0.0, 1.0, 3.0, 0.0, 2.0, 0.0, 5.0], [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    m = D.advantage_metrics(adv, segment_ids >= 0, tool)
    assert m["adv_var_tool_tokens"] == pytest.approx(2 / 3)  # values 1, 3, 2: mean 2, var (1 + 1 + 0) / 3
    assert m["tool_token_frac"] == pytest.approx(3 / 7)
    # loss tokens: row 0 has 1, 3, 2, 5 (4 nonzero), row 1 has 1, 1, 1 (3 nonzero): 7 of 7
    assert m["adv_nonzero_frac"] == pytest.approx(1.0)
    adv[1] = 0.0
    assert D.advantage_metrics(adv, segment_ids >= 0, tool)["adv_nonzero_frac"] == pytest.approx(4 / 7)


def test_zero_variance_groups_are_counted():
    # group 0: rewards 1, 1 (flat); group 3: 0, 2 (signal); group 5: 0.5 alone (flat)
    outcome, group = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.5]), torch.tensor([0, 0, 3, 3, 5])
    assert D.group_signal_metrics(outcome, group)["zero_var_group_frac"] == pytest.approx(2 / 3)


def test_bootstrap_variance_matches_the_resampling_distribution():
    gen = torch.Generator().manual_seed(0)
    # two groups with sums q = (1, 3): a replicate adds two draws, each with variance 1 -> variance 2
    values, group = torch.tensor([0.5, 0.5, 1.0, 2.0]), torch.tensor([0, 0, 7, 7])
    assert D.bootstrap_variance(values, group, n_resamples=20_000, generator=gen) == pytest.approx(2.0, rel=0.05)
    assert D.bootstrap_variance(values, torch.zeros(4, dtype=torch.long), n_resamples=8, generator=gen) == 0.0
    with pytest.raises(ValueError, match="n_resamples must be >= 2"):
        D.bootstrap_variance(values, group, n_resamples=1, generator=gen)


def test_projected_gradient_matches_finite_differences_in_float64():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    params = list(model.parameters())
    v = D.random_direction(params, seed=3)
    assert sum((t * t).sum() for t in v).item() == pytest.approx(1.0, rel=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(v, D.random_direction(params, seed=3)))
    loss = lambda: (model(x).squeeze(1) ** 2).sum()  # noqa: E731
    exact = D.projected_gradient(loss(), params, v)
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(d, alpha=eps)
        plus = loss().item()
        for p, d in zip(params, v):
            p.add_(d, alpha=-2 * eps)
        minus = loss().item()
    assert exact == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)
    assert all(p.grad is None for p in params)  # .grad untouched: the optimizer's gradients stay clean
