"""Advantage estimators: hand-computed cases, loop-vs-vectorised agreement, invariants, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from mapo.algo.advantage import (
    AdvantageConfig,
    estimator_facts,
    get_estimator,
    group_normalize,
    list_estimators,
    normalize_semantic,
    register_estimator,
    segment_credit,
)

NAN = float("nan")
EPS = 1e-6


def cfg(name: str = "mapo", **kw) -> AdvantageConfig:
    return AdvantageConfig(estimator=name, **kw)


# ---------------------------------------------------------------------------------------------
# slow loop references, written independently of the vectorised code


def ref_grpo(outcome: list[float], group: list[int], eps: float = EPS, norm_by_std: bool = True) -> list[float]:
    """verl's compute_grpo_outcome_advantage, as a per-group loop with torch.mean / torch.std."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        by_group.setdefault(g, []).append(i)
    out = [0.0] * len(outcome)
    for members in by_group.values():
        scores = torch.tensor([outcome[i] for i in members], dtype=torch.float64)
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = float(torch.mean(scores)), float(torch.std(scores))  # unbiased
        for i in members:
            out[i] = (outcome[i] - mean) / (std + eps) if norm_by_std else outcome[i] - mean
    return out


def ref_semantic_hat(semantic: list[list[float]], group: list[int], eps: float = EPS) -> list[list[float]]:
    out = [[NAN] * len(row) for row in semantic]
    for g in set(group):
        cells = [(i, c) for i in range(len(group)) if group[i] == g for c in range(len(semantic[i]))]
        cells = [(i, c) for i, c in cells if not math.isnan(semantic[i][c])]
        values = [semantic[i][c] for i, c in cells]
        n = len(values)
        if n < 2:
            for i, c in cells:
                out[i][c] = 0.0
            continue
        mu = sum(values) / n
        sigma = math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1))
        for i, c in cells:
            out[i][c] = (semantic[i][c] - mu) / (sigma + eps)
    return out


def ref_credit(segment_ids: list[list[int]], s_hat: list[list[float]], lam: float) -> list[list[float]]:
    out = []
    for i, row in enumerate(segment_ids):
        out_row = []
        for j in row:
            if j < 0:
                out_row.append(0.0)
                continue
            first = max(j, 1)
            num = den = 0.0
            for c, s in enumerate(s_hat[i]):
                k = c + 1
                if k >= first and not math.isnan(s):
                    num += lam ** (k - first) * s
                    den += lam ** (k - first)
            out_row.append(num / den if den > 0 else 0.0)
        out.append(out_row)
    return out


def ref_estimator(name, outcome, group, segment_ids, semantic, beta, lam):
    """Loop reference for every built-in estimator (eps=1e-6, norm_by_std, default no_obs rule)."""
    if name == "reward_mix":
        means = []
        for row in semantic:
            present = [s for s in row if not math.isnan(s)]
            means.append(sum(present) / len(present) if present else None)
        filled = []
        for i, m in enumerate(means):
            if m is None:
                others = [means[t] for t in range(len(group)) if group[t] == group[i] and means[t] is not None]
                m = min(others) if others else 0.0
            filled.append(m)
        mixed = [(1 - beta) * r + beta * m for r, m in zip(outcome, filled)]
        a = ref_grpo(mixed, group)
        return [[a[i] if j >= 0 else 0.0 for j in row] for i, row in enumerate(segment_ids)]
    a = ref_grpo(outcome, group)
    if name == "grpo":
        return [[a[i] if j >= 0 else 0.0 for j in row] for i, row in enumerate(segment_ids)]
    credit = ref_credit(segment_ids, ref_semantic_hat(semantic, group), lam)
    out = []
    for i, row in enumerate(segment_ids):
        if name == "mapo":
            out.append([a[i] + beta * credit[i][t] if j >= 0 else 0.0 for t, j in enumerate(row)])
        else:  # mapo_gated
            out.append([a[i] * (1 + beta * math.tanh(credit[i][t])) if j >= 0 else 0.0 for t, j in enumerate(row)])
    return out


def random_batch(gen: torch.Generator, n_groups: int = 4, max_g: int = 5, T: int = 12, K: int = 4, min_g: int = 1):
    """Random groups (sizes 1..max_g), rewards with ties, segments laid out as prompt|a0|obs|a1|..., NaN holes."""
    sizes = torch.randint(min_g, max_g + 1, (n_groups,), generator=gen).tolist()
    group = torch.tensor([g * 7 + 3 for g, n in enumerate(sizes) for _ in range(n)])  # non-contiguous ids
    B = len(group)
    outcome = torch.randint(0, 3, (B,), generator=gen).double() / 2  # {0, .5, 1}: ties happen
    segment_ids = torch.full((B, T), -1, dtype=torch.long)
    for i in range(B):
        t, j = int(torch.randint(0, 3, (1,), generator=gen)), 0
        while t < T:
            length = int(torch.randint(1, 4, (1,), generator=gen))
            segment_ids[i, t : t + length] = j
            t += length + int(torch.randint(1, 3, (1,), generator=gen))  # observation tokens stay -1
            j += 1
    semantic = torch.rand(B, K, generator=gen, dtype=torch.float64)
    semantic[torch.rand(B, K, generator=gen) < 0.35] = NAN
    return outcome, group, segment_ids, semantic


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def test_grpo_hand_computed():
    # R = [1, 0, 0.5] in one group: mean 0.5, unbiased var (0.25 + 0.25 + 0) / 2 = 0.25, std 0.5
    # A = [0.5, -0.5, 0] / (0.5 + 1e-6); group {3}: single member -> mean 0, std 1 -> A = 2 / (1 + 1e-6)
    outcome = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 3])
    seg = torch.tensor([[-1, 0, 1], [0, 0, -1], [0, -1, -1], [-1, 0, 0]])
    adv = get_estimator("grpo")(outcome, group, seg, None, config=cfg("grpo"))
    a = 0.5 / (0.5 + 1e-6)
    b = 2.0 / (1 + 1e-6)
    expected = torch.tensor([[0, a, a], [-a, -a, 0], [0, 0, 0], [0, b, b]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_grpo_without_std_is_mean_centred():
    # Dr. GRPO: R - mean = [0.5, -0.5, 0]; the singleton keeps its raw reward (mean 0, as verl)
    outcome = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    adv = group_normalize(outcome, torch.tensor([0, 0, 0, 3]), eps=EPS, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 2.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_mapo_hand_computed():
    # outcome: R = [1, 0] -> mean .5, std sqrt(.5) -> A_hat = +-0.5 / (sqrt(.5) + 1e-6)
    # semantic: present scores .9, .5, .1 -> mu .5, unbiased var (.16 + 0 + .16) / 2 = .16, sigma .4
    #   S_hat = [[+.4, 0], [-.4, nan]] / (.4 + 1e-6) = [[~1, 0], [~-1, nan]]
    # credit with lam = .5 (j' = max(j, 1)):
    #   traj 0: seg 0, 1 -> (1 * 1 + .5 * 0) / (1 + .5) = 2/3;  seg 2 -> 0 / 1 = 0
    #   traj 1: seg 0, 1 -> only k = 1 present -> -1;            seg 2 -> nothing present -> 0
    outcome = torch.tensor([1.0, 0.0], dtype=torch.float64)
    group = torch.tensor([5, 5])
    seg = torch.tensor([[0, -1, 1, -1, 2], [0, 0, -1, 1, 2]])
    semantic = torch.tensor([[0.9, 0.5], [0.1, NAN]], dtype=torch.float64)
    a_hat = 0.5 / (math.sqrt(0.5) + 1e-6)
    s1 = 0.4 / (0.4 + 1e-6)
    c0 = (s1 + 0.5 * 0.0) / 1.5
    expected = torch.tensor(
        [
            [a_hat + 0.4 * c0, 0, a_hat + 0.4 * c0, 0, a_hat],
            [-a_hat - 0.4 * s1, -a_hat - 0.4 * s1, 0, -a_hat - 0.4 * s1, -a_hat],
        ],
        dtype=torch.float64,
    )
    adv = get_estimator("mapo")(outcome, group, seg, semantic, config=cfg(beta=0.4, lam=0.5))
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    gated = get_estimator("mapo_gated")(outcome, group, seg, semantic, config=cfg("mapo_gated", beta=0.4, lam=0.5))
    g0, g1 = a_hat * (1 + 0.4 * math.tanh(c0)), -a_hat * (1 + 0.4 * math.tanh(-s1))
    expected_gated = torch.tensor([[g0, 0, g0, 0, a_hat], [g1, g1, 0, g1, -a_hat]], dtype=torch.float64)
    torch.testing.assert_close(gated, expected_gated, rtol=0, atol=1e-12)


def test_reward_mix_hand_computed():
    # beta = .5; per-trajectory means: [.8, .2, (none -> group min .2)]
    # R' = .5 * [1, 0, 1] + .5 * [.8, .2, .2] = [.9, .1, .6]; mean 1.6/3, devs [11/30, -13/30, 2/30]
    # unbiased var = ((11/30)^2 + (13/30)^2 + (2/30)^2) / 2 = (121 + 169 + 4) / 900 / 2 = 294 / 1800
    outcome = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    semantic = torch.tensor([[0.6, 1.0], [0.2, NAN], [NAN, NAN]], dtype=torch.float64)
    seg = torch.zeros(3, 2, dtype=torch.long)
    adv = get_estimator("reward_mix")(outcome, torch.zeros(3, dtype=torch.long), seg, semantic, config=cfg("reward_mix", beta=0.5))
    std = math.sqrt(294 / 1800)
    expected = torch.tensor([11 / 30, -13 / 30, 2 / 30], dtype=torch.float64) / (std + 1e-6)
    torch.testing.assert_close(adv[:, 0], expected, rtol=0, atol=1e-12)
    # an explicit fill value replaces the group minimum: R'_2 = .5 + .5 * 1.0 = 1.0
    adv2 = get_estimator("reward_mix")(
        outcome, torch.zeros(3, dtype=torch.long), seg, semantic, config=cfg("reward_mix", beta=0.5, no_obs_semantic=1.0)
    )
    mixed = torch.tensor([0.9, 0.1, 1.0], dtype=torch.float64)
    torch.testing.assert_close(adv2[:, 0], (mixed - mixed.mean()) / (mixed.std() + 1e-6), rtol=0, atol=1e-12)


def test_segment_credit_lambda_discount_over_three_observations():
    # S_hat = [1, 2, 4], lam = .5; seg 0 and 1 (j' = 1): (1 + .5*2 + .25*4) / (1 + .5 + .25) = 3 / 1.75
    # seg 2 (j' = 2): (2 + .5*4) / 1.5 = 8/3; seg 3: 4; seg 4: no observation k >= 4 -> 0
    seg = torch.tensor([[-1, 0, -1, 1, -1, 2, -1, 3, 4]])
    s_hat = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    expected = torch.tensor([[0, 3 / 1.75, 0, 3 / 1.75, 0, 8 / 3, 0, 4, 0]], dtype=torch.float64)
    torch.testing.assert_close(segment_credit(seg, s_hat, 0.5), expected, rtol=0, atol=1e-14)


def test_semantic_group_with_one_observation_is_zero():
    # group 0 has a single present score -> S_hat 0; group 1 has two -> +-1 (scaled by eps)
    semantic = torch.tensor([[0.7, NAN], [NAN, NAN], [0.2, 0.4]], dtype=torch.float64)
    s_hat = normalize_semantic(semantic, torch.tensor([0, 0, 1]), eps=EPS, norm_by_std=True)
    d = 0.1 / (math.sqrt(0.02) + 1e-6)  # devs +-.1, unbiased var .02
    expected = torch.tensor([[0.0, NAN], [NAN, NAN], [-d, d]], dtype=torch.float64)
    torch.testing.assert_close(s_hat, expected, rtol=0, atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# loop vs vectorised


@pytest.mark.parametrize("name", ["grpo", "mapo", "mapo_gated", "reward_mix"])
def test_vectorised_matches_loop_reference(name):
    gen = torch.Generator().manual_seed(1234)
    for trial in range(20):
        outcome, group, seg, semantic = random_batch(gen)
        beta, lam = [(0.4, 0.95), (0.9, 0.3), (0.0, 1.0), (0.25, 0.0)][trial % 4]
        got = get_estimator(name)(outcome, group, seg, semantic, config=cfg(name, beta=beta, lam=lam))
        want = ref_estimator(name, outcome.tolist(), group.tolist(), seg.tolist(), semantic.tolist(), beta, lam)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_segment_credit_matches_loop_reference():
    gen = torch.Generator().manual_seed(7)
    for lam in (0.0, 0.5, 0.95, 1.0):
        _, group, seg, semantic = random_batch(gen, K=6)
        got = segment_credit(seg, semantic, lam)
        want = ref_credit(seg.tolist(), semantic.tolist(), lam)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_float32_matches_float64():
    outcome, group, seg, semantic = random_batch(torch.Generator().manual_seed(3))
    for name in list_estimators():
        a64 = get_estimator(name)(outcome, group, seg, semantic, config=cfg(name))
        a32 = get_estimator(name)(outcome.float(), group, seg, semantic.float(), config=cfg(name))
        assert a32.dtype == torch.float32
        torch.testing.assert_close(a32.double(), a64, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# invariants


def test_identical_rewards_give_zero_outcome_part():
    gen = torch.Generator().manual_seed(0)
    _, group, seg, semantic = random_batch(gen, min_g=2)  # a singleton keeps R / (1 + eps), as in verl
    outcome = torch.full(group.shape, 0.7, dtype=torch.float64)
    grpo_adv = get_estimator("grpo")(outcome, group, seg, semantic, config=cfg("grpo"))
    assert grpo_adv.abs().max() < 1e-8  # (R - mean) is rounding noise, divided by eps
    gated = get_estimator("mapo_gated")(outcome, group, seg, semantic, config=cfg("mapo_gated"))
    assert gated.abs().max() < 1e-8
    # mapo keeps a pure semantic signal when the outcome cannot discriminate
    mapo_adv = get_estimator("mapo")(outcome, group, seg, semantic, config=cfg())
    credit = segment_credit(seg, normalize_semantic(semantic, group, eps=EPS, norm_by_std=True), 0.95)
    torch.testing.assert_close(mapo_adv, 0.4 * credit, rtol=0, atol=1e-8)
    assert mapo_adv.abs().max() > 0.1


@pytest.mark.parametrize("name", ["mapo", "mapo_gated"])
def test_all_nan_semantic_reduces_to_grpo_exactly(name):
    outcome, group, seg, semantic = random_batch(torch.Generator().manual_seed(11))
    semantic = torch.full_like(semantic, NAN)
    got = get_estimator(name)(outcome, group, seg, semantic, config=cfg(name))
    assert torch.equal(got, get_estimator("grpo")(outcome, group, seg, None, config=cfg("grpo")))
    empty = torch.empty(len(group), 0, dtype=torch.float64)  # K = 0 observations
    assert torch.equal(get_estimator(name)(outcome, group, seg, empty, config=cfg(name)), got)


@pytest.mark.parametrize("name", ["grpo", "mapo", "mapo_gated", "reward_mix"])
def test_permuting_trajectories_permutes_output(name):
    outcome, group, seg, semantic = random_batch(torch.Generator().manual_seed(5))
    perm = torch.randperm(len(group), generator=torch.Generator().manual_seed(6))
    base = get_estimator(name)(outcome, group, seg, semantic, config=cfg(name))
    permuted = get_estimator(name)(outcome[perm], group[perm], seg[perm], semantic[perm], config=cfg(name))
    torch.testing.assert_close(permuted, base[perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["grpo", "mapo", "mapo_gated", "reward_mix"])
def test_outside_loss_is_exactly_zero(name):
    outcome, group, seg, semantic = random_batch(torch.Generator().manual_seed(9))
    adv = get_estimator(name)(outcome, group, seg, semantic, config=cfg(name))
    assert adv.shape == seg.shape
    assert torch.all(adv[seg == -1] == 0)
    assert adv[seg >= 0].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# registry, config and bad input


def test_registry_lists_and_rejects_unknown():
    assert {"grpo", "mapo", "mapo_gated", "reward_mix"} <= set(list_estimators())
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'; registered: .*grpo.*mapo"):
        get_estimator("gae")
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("grpo", needs_semantic=False)(lambda *a, **k: None)


def test_registry_records_each_estimators_facts():
    facts = {name: estimator_facts(name) for name in list_estimators()}
    assert {n: f.needs_semantic for n, f in facts.items() if n in ("grpo", "mapo", "mapo_gated", "reward_mix")} == {
        "grpo": False, "mapo": True, "mapo_gated": True, "reward_mix": True,
    }
    assert facts["mapo"].max_beta is None and facts["grpo"].max_beta is None
    assert facts["mapo_gated"].max_beta == facts["reward_mix"].max_beta == 1.0
    AdvantageConfig(estimator="mapo", beta=3.0)  # mapo's beta has no upper limit
    # The fact matches what the estimator does: without semantic scores it refuses exactly when it says so.
    outcome, group, seg = torch.tensor([0.0, 1.0]), torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
    for name, f in facts.items():
        try:
            f.fn(outcome, group, seg, None, config=cfg(name))
            refused = False
        except ValueError:
            refused = True
        assert refused == f.needs_semantic, name
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'"):
        estimator_facts("gae")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"estimator": "nope"}, "estimator must be one of"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"estimator": "reward_mix", "beta": 1.5}, r"beta must be <= 1 for reward_mix: it weights R by \(1 - beta\)"),
        ({"estimator": "mapo_gated", "beta": 1.01}, r"beta must be <= 1 for mapo_gated: its gate .* positive; got 1.01"),
        ({"lam": 1.2}, r"lam must be in \[0, 1\]"),
        ({"eps": 0.0}, "eps must be > 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdvantageConfig(**kwargs)


def test_bad_shapes_and_types_raise_clear_errors():
    B, T, K = 3, 4, 2
    outcome, group = torch.zeros(B), torch.zeros(B, dtype=torch.long)
    seg, sem = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, K)
    mapo_fn = get_estimator("mapo")
    c = cfg()
    with pytest.raises(ValueError, match=r"outcome must be a float tensor of shape \(B,\)"):
        mapo_fn(outcome[:, None], group, seg, sem, config=c)
    with pytest.raises(ValueError, match=r"outcome must be a float tensor"):
        mapo_fn(torch.zeros(B, dtype=torch.long), group, seg, sem, config=c)
    with pytest.raises(ValueError, match="outcome must be finite"):
        mapo_fn(torch.tensor([0.0, NAN, 1.0]), group, seg, sem, config=c)
    with pytest.raises(ValueError, match=r"group must be an integer tensor of shape \(B,\)=\(3,\)"):
        mapo_fn(outcome, group.float(), seg, sem, config=c)
    with pytest.raises(ValueError, match=r"group must be an integer tensor"):
        mapo_fn(outcome, group[:2], seg, sem, config=c)
    with pytest.raises(ValueError, match=r"segment_ids must be an integer tensor of shape \(B, T\) with B=3"):
        mapo_fn(outcome, group, seg[0], sem, config=c)
    with pytest.raises(ValueError, match="segment_ids must be >= -1"):
        mapo_fn(outcome, group, seg - 2, sem, config=c)
    with pytest.raises(ValueError, match=r"semantic must be a float tensor of shape \(B, K\) with B=3"):
        mapo_fn(outcome, group, seg, sem[:2], config=c)
    with pytest.raises(ValueError, match="semantic must be finite or NaN"):
        mapo_fn(outcome, group, seg, torch.full((B, K), float("inf")), config=c)
    for name in ("mapo", "mapo_gated", "reward_mix"):
        with pytest.raises(ValueError, match=f"'{name}' needs semantic scores"):
            get_estimator(name)(outcome, group, seg, None, config=cfg(name))
    with pytest.raises(ValueError, match="mapo_gated needs config.beta <= 1"):
        get_estimator("mapo_gated")(outcome, group, seg, sem, config=cfg("mapo", beta=2.0))


def test_batch_baseline_credits_what_differs_between_prompts():
    """Two groups that each agree (R = 1, 1 and 0, 0): GRPO gives 0 everywhere; a batch baseline
    gives (R - 0.5) / (std + eps) with the unbiased std of (1, 1, 0, 0) = sqrt(1/3) -> ±0.8660."""
    from mapo.algo.advantage import AdvantageConfig, get_estimator

    outcome, group = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1])
    segment_ids = torch.tensor([[-1, 0, 0]] * 4)
    flat = get_estimator("grpo")(outcome, group, segment_ids, config=AdvantageConfig(estimator="grpo"))
    assert torch.equal(flat, torch.zeros(4, 3))
    batch = get_estimator("grpo")(outcome, group, segment_ids, config=AdvantageConfig(estimator="grpo", baseline="batch"))
    a = 0.5 / (3**-0.5 + 1e-6)
    torch.testing.assert_close(batch[:, 1], torch.tensor([a, a, -a, -a]))
    assert torch.equal(batch[:, 0], torch.zeros(4))
    with pytest.raises(ValueError, match="baseline must be one of"):
        AdvantageConfig(baseline="prompt")


def test_trainer_and_verl_adapter_read_the_registered_facts():
    """The trainer's verifier check and the verl adapter classify estimators by their facts, not their names."""
    from mapo.integrations.verl import estimator as verl_estimator
    from mapo.train.rl import needs_semantic

    for name in list_estimators():
        assert needs_semantic(AdvantageConfig(estimator=name)) == estimator_facts(name).needs_semantic
    # Every registered estimator has a verl name, by one rule: a new estimator needs no edit here.
    assert sorted(verl_estimator.VERL_ESTIMATORS.values()) == list_estimators()
    assert {verl_estimator.verl_name_of(n) for n in ("mapo", "mapo_gated", "reward_mix", "grpo")} == {
        "mapo", "mapo_gated", "mapo_reward_mix", "mapo_grpo",
    }
    for verl_name, name in verl_estimator.VERL_ESTIMATORS.items():
        assert verl_estimator.needs_semantic(verl_name) == estimator_facts(name).needs_semantic


def test_help_texts_name_the_registered_estimators():
    """The config's and the command's help texts are built from the registry, so they list every estimator."""
    import argparse
    import dataclasses

    from mapo.algo.advantage import AdvantageConfig, list_estimators, semantic_estimators
    from mapo.cli import train as train_command
    from mapo.train.rl import RLConfig

    def listed(help_text: str, after: str) -> list[str]:
        return sorted(help_text.split(after)[-1].split(")")[0].split(";")[0].replace(" ", "").split(","))

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(AdvantageConfig)}
    assert listed(helps["estimator"], "registered name:") == list_estimators()
    assert listed(helps["beta"], "semantic term (") == semantic_estimators() == ["mapo", "mapo_gated", "reward_mix"]
    verifier_help = next(f for f in dataclasses.fields(RLConfig) if f.name == "verifier").metadata["help"]
    assert listed(verifier_help, "required by") == semantic_estimators()
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    algo = next(a for a in parser._actions if a.dest == "algo")
    assert listed(algo.help, "advantage estimator:") == list_estimators()


def test_registered_estimators_share_the_checks_and_the_baseline():
    """get_estimator wraps the registered maths: checks from the facts, then the baseline's groups."""
    seen = {}

    @register_estimator("test_probe", needs_semantic=True, max_beta=0.5, beta_limit_reason="probe")
    def probe(outcome, group, segment_ids, semantic=None, *, config):
        seen["group"] = group.clone()
        return torch.zeros(segment_ids.shape)

    try:
        outcome, group = torch.tensor([1.0, 0.0]), torch.tensor([3, 4])
        seg, sem = torch.zeros((2, 3), dtype=torch.long), torch.full((2, 1), float("nan"))
        fn = get_estimator("test_probe")
        assert fn is probe and fn.__wrapped__ is not probe  # the decorator returns the checked estimator
        with pytest.raises(ValueError, match="needs semantic scores"):
            fn(outcome, group, seg, None, config=AdvantageConfig(beta=0.4))
        with pytest.raises(ValueError, match=r"test_probe needs config.beta <= 0.5"):
            fn(outcome, group, seg, sem, config=AdvantageConfig(beta=0.6))
        with pytest.raises(ValueError, match="outcome must be a float tensor"):
            fn(torch.tensor([1, 0]), group, seg, sem, config=AdvantageConfig(beta=0.4))
        fn(outcome, group, seg, sem, config=AdvantageConfig(beta=0.4, baseline="batch"))
        assert seen["group"].tolist() == [0, 0]  # one group for the whole batch
        fn(outcome, group, seg, sem, config=AdvantageConfig(beta=0.4))
        assert seen["group"].tolist() == [3, 4]
    finally:
        from mapo.algo import advantage

        del advantage._ESTIMATORS["test_probe"]
