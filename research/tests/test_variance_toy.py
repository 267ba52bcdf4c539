"""The variance toy: exact gradient, estimator plumbing through the real loss, and the variance claim."""

from __future__ import annotations

import pytest
import torch

from mapo.algo.advantage import AdvantageConfig, get_estimator
from variance_toy import (
    ToyConfig,
    gradient_estimates,
    initial_logits,
    main,
    relevance,
    run_toy,
    sample_groups,
    true_gradient,
)
from mapo.algo.loss import LossConfig, policy_loss


def test_true_gradient_matches_autograd():
    config = ToyConfig()
    theta = initial_logits(config).requires_grad_(True)
    r, _ = relevance(config)
    (torch.softmax(theta, 0) * r).sum().backward()
    torch.testing.assert_close(true_gradient(theta.detach(), r), theta.grad, rtol=0, atol=1e-14)


def test_closed_form_estimate_equals_autograd_of_policy_loss():
    # on-policy (ratio 1), token-mean over the zoom tokens only: loss = -(1/B) sum_i A_i ratio_i,
    # so -grad(loss) = mean over groups of the per-group estimates
    config = ToyConfig(seeds=5, group_size=4)
    theta = initial_logits(config).requires_grad_(True)
    batch = sample_groups(config, theta.detach(), torch.Generator().manual_seed(3))
    seg = batch["segment_ids"]
    adv = get_estimator("mapo")(batch["outcome"], batch["group"], seg, batch["semantic"], config=AdvantageConfig())
    logp_action = torch.log_softmax(theta, 0)[batch["action"]]  # (B,)
    logp = torch.where(seg == 0, logp_action[:, None], torch.zeros(seg.shape, dtype=torch.float64))  # (B, T)
    loss, _ = policy_loss(logp, logp.detach(), adv, seg == 0, config=LossConfig())
    loss.backward()
    estimates = gradient_estimates(adv[:, 0], batch["action"], theta.detach(), config)
    torch.testing.assert_close(-theta.grad, estimates.mean(0), rtol=0, atol=1e-14)


def test_oracle_is_unbiased():
    results, g_true = run_toy(ToyConfig(seeds=8000))
    oracle = {r.name: r for r in results}["oracle (R - J)"]
    # standard error of the mean ~ sqrt(tr Cov / n) = sqrt(.019 / 8000) ~ 1.5e-3
    assert oracle.bias_norm < 6e-3
    assert oracle.cosine_of_mean > 0.999
    assert float(g_true.norm()) > 0.1


def test_mapo_has_lower_noise_to_signal_than_grpo_at_default_beta():
    results, _ = run_toy(ToyConfig(), AdvantageConfig())  # 4000 groups of G=8, beta=.4, lam=.95
    stats = {r.name: r for r in results}
    grpo, mapo = stats["grpo"], stats["mapo"]
    # the claim, scale-free: variance per unit of mean gradient, and how uphill one group's step points
    assert mapo.noise_to_signal < 0.75 * grpo.noise_to_signal  # measured .46 vs .90
    assert mapo.mean_cosine > grpo.mean_cosine + 0.05  # measured .82 vs .71
    # the honest part: the raw trace is *higher* (the semantic term adds magnitude), and the
    # semantic term tilts the mean away from grad J (it also rewards zooming next to the target)
    assert mapo.variance > grpo.variance
    assert mapo.cosine_of_mean < grpo.cosine_of_mean


def test_uninformative_semantics_give_no_advantage_to_mapo():
    # pure-noise scores (relevance swamped by noise): the semantic term should not help much
    noisy = {r.name: r for r in run_toy(ToyConfig(semantic_noise=100.0, seeds=8000))[0]}
    clean = {r.name: r for r in run_toy(ToyConfig(seeds=8000))[0]}
    assert noisy["mapo"].mean_cosine < clean["mapo"].mean_cosine - 0.05
    assert noisy["mapo"].mean_cosine < noisy["grpo"].mean_cosine + 0.01


def test_cli_prints_table(capsys):
    assert main(["--seeds", "50", "--group-size", "4"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "mapo", "mapo_gated", "reward_mix", "oracle"):
        assert name in out
    assert "G=4, 50 groups" in out


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        ToyConfig(group_size=1)
    with pytest.raises(ValueError, match="n_boxes must be >= 3"):
        ToyConfig(n_boxes=2)
