"""A "which box to zoom" bandit where the true policy gradient is known in closed form.

The claim under test (docs/algorithm.md): coupling a per-turn semantic score into
the advantage gives a lower-variance policy-gradient estimate than outcome-only GRPO.

The toy. A softmax policy over ``M`` boxes with logits ``theta`` (M,). One episode has
two assistant segments: segment 0 is the zoom action ``a ~ softmax(theta)``, then
observation 1 (the crop), then segment 1, the answer. The answer is correct with
probability ``p_hit`` if ``a`` is the target box and ``p_miss`` otherwise, so the
outcome reward ``R`` in {0, 1} is a noisy signal of the action. The verifier's score of
the description of the crop is ``s = q(a) + N(0, semantic_noise^2)`` where ``q`` is the
crop's relevance: 1 on the target, ``neighbour_quality`` on the two boxes next to it
(boxes sit on a ring), 0 elsewhere. Only segment 0 depends on ``theta`` (the answer is
part of the environment here), so one group of ``G`` episodes gives the on-policy
estimate (ratio 1, clipping inactive)::

    g = (1/G) sum_i A_{i,0} * grad log pi(a_i) = (1/G) sum_i A_{i,0} * (e_{a_i} - pi)

with ``A_{i,0}`` the advantage each estimator gives the zoom token.

The objective whose gradient is exact is the expected outcome reward
``J(theta) = sum_a pi_a r(a)``, ``dJ/dtheta_m = pi_m (r(m) - J)``. Be honest about what
is compared: GRPO divides by the group std, so no estimator here is an unbiased
estimate of ``grad J`` in *scale*; and MAPO's semantic term targets a shaped objective
(it also rewards zooming next to the target, which ``J`` does not), so it is biased
in *direction* too. The table therefore reports, per estimator, over many independent
groups: the raw variance (trace of the covariance), the bias (``|mean - grad J|``,
and the cosine between the mean and ``grad J``), the scale-free noise-to-signal ratio
``tr Cov / |mean|^2``, and the mean cosine of a *single* estimate with ``grad J``
(how well one group's update points uphill). The row ``oracle`` uses ``R - J`` with
the exact baseline: an unbiased reference.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mapo.algo.advantage import AdvantageConfig, get_estimator
from mapo.core.config import knob

ESTIMATORS = ("grpo", "mapo", "mapo_gated", "reward_mix")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    n_boxes: int = knob(6, "number of boxes the policy can zoom on (M)")
    p_hit: float = knob(0.8, "probability that the answer is correct after zooming on the target")
    p_miss: float = knob(0.2, "probability that the answer is correct after zooming elsewhere")
    semantic_noise: float = knob(0.1, "std of the verifier's noise around the crop relevance q(a)")
    neighbour_quality: float = knob(0.5, "relevance q of the boxes next to the target (partial view of it)")
    logit_scale: float = knob(0.5, "std of the seeded initial logits theta")
    group_size: int = knob(8, "episodes per group (G); one group gives one gradient estimate")
    seeds: int = knob(4000, "independent gradient estimates (groups) per estimator")
    seed: int = knob(0, "seed of the initial logits and of the sampling")

    def __post_init__(self) -> None:
        if self.n_boxes < 3:
            raise ValueError(f"n_boxes must be >= 3 (a target and two neighbours), got {self.n_boxes}")
        if not (0.0 <= self.p_miss <= 1.0 and 0.0 <= self.p_hit <= 1.0):
            raise ValueError(f"p_hit and p_miss must be probabilities, got {self.p_hit}, {self.p_miss}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO needs a group), got {self.group_size}")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 to estimate a variance, got {self.seeds}")
        if self.semantic_noise < 0:
            raise ValueError(f"semantic_noise must be >= 0, got {self.semantic_noise}")


@dataclasses.dataclass(frozen=True)
class GradientStats:
    """Statistics of one estimator's gradient estimates (M,) over ``seeds`` groups."""

    name: str
    variance: float  # trace of the covariance of the estimates
    bias_norm: float  # |mean estimate - grad J|
    cosine_of_mean: float  # cos(mean estimate, grad J)
    noise_to_signal: float  # tr Cov / |mean estimate|^2
    mean_cosine: float  # mean over groups of cos(single estimate, grad J)


def initial_logits(config: ToyConfig) -> torch.Tensor:
    """(M,) seeded logits; box 0 is the target."""
    gen = torch.Generator().manual_seed(config.seed)
    return torch.randn(config.n_boxes, generator=gen, dtype=torch.float64) * config.logit_scale


def relevance(config: ToyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) success probability r(a) and crop relevance q(a); target = box 0, boxes on a ring."""
    M = config.n_boxes
    r = torch.full((M,), config.p_miss, dtype=torch.float64)
    r[0] = config.p_hit
    q = torch.zeros(M, dtype=torch.float64)
    q[0] = 1.0
    q[1] = q[M - 1] = config.neighbour_quality
    return r, q


def true_gradient(theta: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(M,) exact ``dJ/dtheta`` of ``J = sum_a softmax(theta)_a r(a)``: ``pi_m (r_m - J)``."""
    pi = torch.softmax(theta, dim=0)
    return pi * (r - (pi * r).sum())


def sample_groups(config: ToyConfig, theta: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``seeds`` groups of ``G`` episodes, flattened to B = seeds * G trajectories.

    Returns action (B,), outcome (B,), semantic (B, 1), group (B,) and segment_ids (B, 5)
    laid out as ``zoom | obs obs | answer answer``.
    """
    r, q = relevance(config)
    B = config.seeds * config.group_size
    pi = torch.softmax(theta, dim=0)
    action = torch.multinomial(pi, B, replacement=True, generator=gen)  # (B,)
    outcome = (torch.rand(B, generator=gen, dtype=torch.float64) < r[action]).to(torch.float64)
    noise = torch.randn(B, generator=gen, dtype=torch.float64) * config.semantic_noise
    semantic = (q[action] + noise)[:, None]  # (B, K=1)
    group = torch.arange(config.seeds).repeat_interleave(config.group_size)  # (B,)
    segment_ids = torch.tensor([0, -1, -1, 1, 1]).expand(B, 5)  # (B, T)
    return {"action": action, "outcome": outcome, "semantic": semantic, "group": group, "segment_ids": segment_ids}


def gradient_estimates(zoom_advantage: torch.Tensor, action: torch.Tensor, theta: torch.Tensor, config: ToyConfig) -> torch.Tensor:
    """(seeds, M) per-group estimates ``(1/G) sum_i A_i (e_{a_i} - pi)`` from (B,) zoom-token advantages."""
    pi = torch.softmax(theta, dim=0)
    score = torch.nn.functional.one_hot(action, config.n_boxes).to(torch.float64) - pi  # (B, M) grad log pi(a)
    per_episode = zoom_advantage[:, None] * score  # (B, M)
    return per_episode.view(config.seeds, config.group_size, config.n_boxes).mean(dim=1)  # (seeds, M)


def summarize(name: str, grads: torch.Tensor, g_true: torch.Tensor) -> GradientStats:
    mean = grads.mean(dim=0)
    variance = float(((grads - mean) ** 2).sum(dim=1).mean() * grads.shape[0] / (grads.shape[0] - 1))
    cos_each = torch.nn.functional.cosine_similarity(grads, g_true[None, :], dim=1)  # (seeds,) 0 for zero rows
    return GradientStats(
        name=name,
        variance=variance,
        bias_norm=float((mean - g_true).norm()),
        cosine_of_mean=float(torch.nn.functional.cosine_similarity(mean, g_true, dim=0)),
        noise_to_signal=variance / float(mean.norm() ** 2),
        mean_cosine=float(cos_each.mean()),
    )


def run_toy(config: ToyConfig, adv_config: AdvantageConfig | None = None) -> tuple[list[GradientStats], torch.Tensor]:
    """Estimate the gradient with every estimator on the same sampled groups; returns stats and grad J."""
    adv_config = adv_config or AdvantageConfig()
    theta = initial_logits(config)
    r, _ = relevance(config)
    g_true = true_gradient(theta, r)
    batch = sample_groups(config, theta, torch.Generator().manual_seed(config.seed + 1))
    results = []
    for name in ESTIMATORS:
        fn = get_estimator(name)
        adv = fn(
            batch["outcome"], batch["group"], batch["segment_ids"], batch["semantic"],
            config=dataclasses.replace(adv_config, estimator=name),
        )
        grads = gradient_estimates(adv[:, 0], batch["action"], theta, config)  # column 0 = the zoom token
        results.append(summarize(name, grads, g_true))
    j = float((torch.softmax(theta, 0) * r).sum())
    oracle = gradient_estimates(batch["outcome"] - j, batch["action"], theta, config)
    results.append(summarize("oracle (R - J)", oracle, g_true))
    return results, g_true


def format_table(results: list[GradientStats], config: ToyConfig, adv_config: AdvantageConfig) -> str:
    header = (
        f"variance toy: M={config.n_boxes} boxes, G={config.group_size}, {config.seeds} groups, seed={config.seed}, "
        f"p_hit={config.p_hit}, p_miss={config.p_miss}, semantic_noise={config.semantic_noise}, "
        f"beta={adv_config.beta}, lam={adv_config.lam}"
    )
    cols = f"{'estimator':<16} {'tr Cov':>9} {'|bias|':>9} {'cos(mean,g)':>12} {'trCov/|mean|^2':>15} {'E cos(g_i,g)':>13}"
    lines = [header, cols, "-" * len(cols)]
    for s in results:
        lines.append(
            f"{s.name:<16} {s.variance:>9.4f} {s.bias_norm:>9.4f} {s.cosine_of_mean:>12.3f} "
            f"{s.noise_to_signal:>15.2f} {s.mean_cosine:>13.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python research/variance_toy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=ToyConfig.seeds, help="independent groups per estimator")
    parser.add_argument("--group-size", type=int, default=ToyConfig.group_size, help="episodes per group (G)")
    parser.add_argument("--seed", type=int, default=ToyConfig.seed, help="seed of logits and sampling")
    parser.add_argument("--beta", type=float, default=AdvantageConfig.beta, help="semantic weight beta")
    parser.add_argument("--semantic-noise", type=float, default=ToyConfig.semantic_noise, help="verifier noise std")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = ToyConfig(seeds=args.seeds, group_size=args.group_size, seed=args.seed, semantic_noise=args.semantic_noise)
    adv_config = AdvantageConfig(beta=args.beta)
    results, g_true = run_toy(config, adv_config)
    print(format_table(results, config, adv_config))
    print(f"|grad J| = {float(g_true.norm()):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
