"""mapo.engine.sampling on hand-computed distributions: inverse-CDF, top-p, blocked ids, recorded log-probs."""

from __future__ import annotations

import math

import torch

from mapo.engine.sampling import inverse_cdf, next_tokens, sample_per_row, top_p_filter


def test_inverse_cdf_picks_the_first_id_whose_cdf_exceeds_u():
    # probs (unnormalised) 1, 0, 3 -> cdf 1, 1, 4; u * 4: 0.0 -> id 0, 0.9 -> id 0, 1.0 -> id 2 (skips the zero), 3.99 -> id 2.
    probs = torch.tensor([[1.0, 0.0, 3.0]] * 4)
    u = torch.tensor([0.0, 0.225, 0.25, 0.9975], dtype=torch.float64)
    assert inverse_cdf(probs, u).tolist() == [0, 0, 2, 2]


def test_top_p_keeps_the_smallest_head_reaching_p_and_always_the_top_token():
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    # sorted 0.5, 0.3, 0.1, 0.1: mass before each 0, 0.5, 0.8, 0.9; with p = 0.6 the first two stay.
    assert torch.equal(top_p_filter(probs, 0.6), torch.tensor([[0.0, 0.5, 0.3, 0.0]]))
    # p smaller than the top token's mass: the top token alone.
    assert torch.equal(top_p_filter(probs, 0.1), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))


def test_blocked_ids_are_never_chosen_and_the_recorded_distribution_is_tempered():
    logits = torch.tensor([[2.0, 10.0, 0.0]])
    blocked = torch.tensor([1])
    tokens, logp = next_tokens(logits, blocked, temperature=2.0, greedy=True, top_p=1.0)
    assert tokens.tolist() == [0]
    # log_softmax([1, -inf, 0]) = [1 - log(e + 1), -inf, -log(e + 1)]
    z = math.log(math.e + 1)
    assert torch.allclose(logp[0, [0, 2]], torch.tensor([1 - z, -z]), atol=1e-6, rtol=0)
    assert logp[0, 1] == float("-inf")


def test_a_row_draws_the_same_token_whatever_else_is_in_its_batch():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    alone = sample_per_row(probs[:1], [torch.Generator().manual_seed(7)])
    together = sample_per_row(probs, [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    assert together[0] == alone[0]
    # The draw is the generator's first float64 uniform through the CDF.
    u = torch.rand((), generator=torch.Generator().manual_seed(7), dtype=torch.float64).item()
    assert alone.item() == (0 if u < 0.2 else 1 if u < 0.5 else 2)
