"""Choosing the next token: tempered distribution without the vision ids, greedy / top-p / sampling.

The recorded log-prob of a token is always ``log_softmax(logits / temperature)`` over
the vocabulary with the blocked (vision special) ids removed, whatever chose the
token, which is what :func:`mapo.engine.trajectory.sequence_logprobs` computes. ``top_p < 1``
and ``greedy`` change how tokens are chosen, not what is recorded, so with them the
recorded log-probs are not those of the behaviour policy.

Sampling is inverse-CDF from one float64 uniform per row. With one shared generator
the batch draws one uniform per row; with one generator per row
(:func:`sample_per_row`) each row consumes exactly one draw of its own stream, so a
row's tokens do not depend on which other rows share its batch.
"""

from __future__ import annotations

import torch


def next_tokens(
    logits: torch.Tensor,
    blocked: torch.Tensor,
    *,
    temperature: float,
    greedy: bool,
    top_p: float,
    generator: torch.Generator | None = None,
    generators: list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen tokens (b,) and the full tempered log-distribution (b, V) of ``logits`` (b, V).

    ``blocked`` (V_b,) ids get probability 0. Sampling uses ``generators`` (one CPU
    generator per row) when given, else the shared ``generator``.
    """
    scaled = logits.float() / temperature
    scaled[:, blocked] = float("-inf")
    logp_all = torch.log_softmax(scaled, dim=-1)  # (b, V)
    if greedy:
        return logp_all.argmax(dim=-1), logp_all
    probs = logp_all.exp()
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    if generators is None:  # one stream for the batch: one uniform per row
        u = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64, device=generator.device)
        return inverse_cdf(probs, u), logp_all
    return sample_per_row(probs, generators), logp_all


def sample_per_row(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (b, V), row ``i`` drawn with ``generators[i]`` (CPU generators).

    Inverse-CDF sampling from one float64 uniform per row, so each row consumes exactly
    one draw of its own stream whatever the batch holds (and the same on CPU or GPU).
    """
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])  # (b,)
    return inverse_cdf(probs, u)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids (b,) for rows of ``probs`` (b, V, unnormalised) and uniforms ``u`` (b,) in [0, 1).

    Cheaper on CPU than ``torch.multinomial`` for a batch of rows (one cumsum and one search).
    """
    cdf = probs.double().cumsum(dim=-1)  # (b, V)
    # right=True: the first index whose cdf exceeds u * total, so zero-probability ids are never chosen.
    tokens = torch.searchsorted(cdf, (u.to(probs.device) * cdf[:, -1])[:, None], right=True).squeeze(1)
    return tokens.clamp_(max=probs.shape[1] - 1)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row of ``probs`` (b, V) beyond cumulative mass ``top_p`` (the top token always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # (b, V) mass before this token exceeds top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


__all__ = ["inverse_cdf", "next_tokens", "sample_per_row", "top_p_filter"]
