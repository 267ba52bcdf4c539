"""Policy loss and aggregation: hand-computed values, a per-token loop reference, DP/accumulation invariance."""

from __future__ import annotations

import math

import pytest
import torch

from mapo.algo.loss import LossConfig, agg_loss, kl_penalty, policy_loss

LN = math.log


def test_agg_modes_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the third sequence has no loss token
    # token-mean: (1 + 2 + 4) / 3
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(7 / 3, abs=1e-7)
    # seq-mean-token-mean: ((1 + 2) / 2 + 4 / 1) / 2 sequences with tokens
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx(2.75, abs=1e-7)
    # seq-mean-token-sum: (3 + 4) / 2
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx(3.5, abs=1e-7)
    # explicit denominators replace the local counts
    assert agg_loss(loss, mask, "token-mean", denominator=7).item() == pytest.approx(1.0, abs=1e-7)
    assert agg_loss(loss, mask, "seq-mean-token-sum", denominator=7).item() == pytest.approx(1.0, abs=1e-7)
    # an empty mask gives 0, not NaN
    assert agg_loss(loss, torch.zeros_like(mask), "token-mean").item() == 0.0


def test_agg_ignores_nan_outside_the_mask():
    loss = torch.tensor([[1.0, float("nan")]], requires_grad=True)
    out = agg_loss(loss, torch.tensor([[1, 0]]), "token-mean")
    out.backward()
    assert out.item() == 1.0
    assert loss.grad.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_global_denominator_makes_micro_batches_sum_to_the_full_batch(mode):
    gen = torch.Generator().manual_seed(0)
    B, T = 8, 10
    loss = torch.randn(B, T, generator=gen, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([1, 9, 3, 10, 2, 7, 0, 5])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T), unequal lengths
    full = agg_loss(loss, mask, mode)
    (g_full,) = torch.autograd.grad(full, loss)
    if mode == "token-mean":
        denominator = mask.sum()
    else:
        denominator = (mask.sum(-1) > 0).sum()
    # 4 micro-batches (think: 2 ranks x 2 accumulation steps), losses summed
    parts = [agg_loss(loss[i : i + 2], mask[i : i + 2], mode, denominator=denominator) for i in range(0, B, 2)]
    summed = torch.stack(parts).sum()
    (g_parts,) = torch.autograd.grad(summed, loss)
    torch.testing.assert_close(summed, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_parts, g_full, rtol=0, atol=1e-12)


def test_local_token_mean_is_not_invariant_without_denominator():
    # why `denominator` exists: micro-batches with different token counts weight tokens differently
    loss = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    full = agg_loss(loss, mask, "token-mean")  # (3 + 4) / 4 = 1.75
    averaged = (agg_loss(loss[:1], mask[:1]) + agg_loss(loss[1:], mask[1:])) / 2  # (1 + 4) / 2 = 2.5
    assert full.item() == pytest.approx(1.75)
    assert averaged.item() == pytest.approx(2.5)


def test_policy_loss_hand_computed():
    # ratios [1.5, .9, .5, 1.1], A = [1, 1, -1, -1], clip .2:
    #   t0: max(-1.5, -1.2) = -1.2 (clipped)   t1: max(-.9, -.9) = -.9
    #   t2: max(.5, .8) = .8 (clipped)         t3: max(1.1, 1.1) = 1.1
    # token-mean: (-1.2 - .9 + .8 + 1.1) / 4 = -.05; clip_frac 2/4
    ratios = [1.5, 0.9, 0.5, 1.1]
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], dtype=torch.float64)
    logp = (old + torch.log(torch.tensor([ratios], dtype=torch.float64))).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    loss, m = policy_loss(logp, old, adv, mask, config=LossConfig())
    assert loss.item() == pytest.approx(-0.05, abs=1e-12)
    assert m["pg_loss"] == pytest.approx(-0.05, abs=1e-12)
    assert m["clip_frac"] == 0.5
    assert m["ppo_kl"] == pytest.approx(-LN(1.5 * 0.9 * 0.5 * 1.1) / 4, abs=1e-12)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-12)
    assert (m["ratio_min"], m["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.5))
    assert "kl" not in m and "entropy" not in m and "clip_frac_lower" not in m
    # d/dlogp of -A*ratio / 4 on unclipped tokens: t1: -.9 / 4, t3: +1.1 / 4; clipped tokens: 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.225, 0.0, 0.275]], dtype=torch.float64))


def test_dual_clip_bounds_negative_advantages():
    # A = -1, ratio 4: standard clip gives max(4, 1.2) = 4; dual clip c = 3 gives min(4, 3) = 3
    # A = +1, ratio 4: untouched by the dual clip: max(-4, -1.2) = -1.2. mean (3 - 1.2) / 2 = .9
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.full((1, 2), LN(4.0), dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    loss, m = policy_loss(logp, old, adv, torch.ones(1, 2), config=LossConfig(dual_clip_c=3.0))
    assert loss.item() == pytest.approx(0.9, abs=1e-12)
    assert m["clip_frac_lower"] == 0.5
    plain, _ = policy_loss(logp, old, adv, torch.ones(1, 2), config=LossConfig())
    assert plain.item() == pytest.approx((4.0 - 1.2) / 2, abs=1e-12)


def test_kl_and_entropy_terms_hand_computed():
    # k3 with logp = log .5, ref = log .25: r = ref - logp = log .5 -> e^r - r - 1 = .5 + log 2 - 1
    logp = torch.full((1, 2), LN(0.5), dtype=torch.float64)
    ref = torch.full((1, 2), LN(0.25), dtype=torch.float64)
    k3 = 0.5 + LN(2) - 1
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.full((1, 2), k3, dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.full((1, 2), LN(2), dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.full((1, 2), 0.5 * LN(2) ** 2, dtype=torch.float64))
    # A = 0 -> pg 0; loss = .1 * k3 - .01 * mean entropy (1.5)
    cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01)
    entropy = torch.full((1, 2), 1.5, dtype=torch.float64)
    loss, m = policy_loss(logp, logp.detach(), torch.zeros(1, 2), torch.ones(1, 2), config=cfg, ref_logp=ref, entropy=entropy)
    assert loss.item() == pytest.approx(0.1 * k3 - 0.01 * 1.5, abs=1e-12)
    assert m["kl"] == pytest.approx(k3, abs=1e-12)
    assert m["entropy"] == pytest.approx(1.5)


def test_masked_tokens_do_not_count():
    # the second token has absurd values but mask 0: loss and metrics come from token 0 only
    old = torch.tensor([[0.0, 0.0]])
    logp = torch.tensor([[LN(1.1), 30.0]])
    adv = torch.tensor([[2.0, 1e6]])
    loss, m = policy_loss(logp, old, adv, torch.tensor([[True, False]]), config=LossConfig())
    assert loss.item() == pytest.approx(-2.2, rel=1e-6)  # max(-2 * 1.1, -2 * 1.1)
    assert m["ratio_max"] == pytest.approx(1.1, rel=1e-6)
    assert m["clip_frac"] == 0.0


def ref_policy_loss_loop(logp, old, adv, mask, clip_low, clip_high, dual_c):
    """verl's compute_policy_loss_vanilla (token-mean), one token at a time in plain Python."""
    num = den = 0.0
    for lp, o, a, m in zip(logp, old, adv, mask):
        if not m:
            continue
        r = math.exp(min(max(lp - o, -20.0), 20.0))
        pg = max(-a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high))
        if dual_c is not None and a < 0:
            pg = min(pg, -a * dual_c)
        num += pg
        den += 1
    return num / den


@pytest.mark.parametrize("dual_c", [None, 3.0])
def test_policy_loss_matches_loop_reference(dual_c):
    gen = torch.Generator().manual_seed(42)
    B, T = 6, 9
    for _ in range(5):
        old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
        logp = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.6
        adv = torch.randn(B, T, generator=gen, dtype=torch.float64)
        mask = torch.rand(B, T, generator=gen) < 0.7
        cfg = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip_c=dual_c)
        loss, _ = policy_loss(logp, old, adv, mask, config=cfg)
        want = ref_policy_loss_loop(
            logp.flatten().tolist(), old.flatten().tolist(), adv.flatten().tolist(), mask.flatten().tolist(), 0.2, 0.28, dual_c
        )
        assert loss.item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_low": 1.0}, r"clip_low must be in \[0, 1\)"),
        ({"clip_high": -0.1}, "clip_high must be >= 0"),
        ({"dual_clip_c": 1.0}, "dual_clip_c must be > 1"),
        ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
        ({"kl_type": "k4"}, "kl_type must be one of"),
        ({"entropy_coef": -0.1}, "entropy_coef must be >= 0"),
        ({"agg_mode": "sum"}, "agg_mode must be one of"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


def test_bad_input_raises_clear_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"advantages must be a tensor of shape \(B, T\) = \(2, 3\)"):
        policy_loss(x, x, torch.zeros(2), x, config=LossConfig())
    with pytest.raises(ValueError, match=r"logp must be a \(B, T\) tensor"):
        policy_loss(torch.zeros(3), x, x, x, config=LossConfig())
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logp"):
        policy_loss(x, x, x, x, config=LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy_coef > 0 needs entropy"):
        policy_loss(x, x, x, x, config=LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="mode must be one of"):
        agg_loss(x, x, "mean")
    with pytest.raises(ValueError, match=r"mask must be a tensor of shape \(B, T\)"):
        agg_loss(x, torch.ones(2, 4), "token-mean")
