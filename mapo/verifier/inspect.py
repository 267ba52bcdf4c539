"""What do verifier scores mean? Quality metrics, the calibration view, throughput.

- :func:`evaluate`: text→image retrieval top-1 among ``C`` candidates, AUROC of
  matched vs mismatched pairs, and the score gap between a correct and a
  hallucinated description of the same crop. Formulas are in ``docs/verifier.md``.
- :func:`calibration_groups` + :func:`format_distribution`: the score
  distribution of correct, partially correct (one attribute wrong) and wrong
  descriptions, printed by ``mapo verifier inspect``.
- :func:`throughput`: scored pairs per second at a given batch size, cache off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import torch

from mapo.verifier.base import Verifier
from mapo.verifier.pairs import is_label_pair, negative_kind


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted half.

    Args:
        positive: (P,) scores of matched pairs.
        negative: (Q,) scores of mismatched pairs.
    """
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError(f"auroc needs at least one positive and one negative, got {positive.numel()} and {negative.numel()}")
    diff = positive.double()[:, None] - negative.double()[None, :]  # (P, Q)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def _embed_pairs(verifier: Verifier, pairs: Sequence, batch_size: int):
    """Image embeddings (M, D) and a text→embedding lookup for every caption and negative."""
    images = verifier.embed_images([p.image for p in pairs], batch_size=batch_size)
    texts = sorted({p.caption for p in pairs} | {n for p in pairs for n in p.negatives})
    text_emb = verifier.embed_text(texts, batch_size=batch_size)
    return images, {t: text_emb[i] for i, t in enumerate(texts)}


def evaluate(verifier: Verifier, pairs: Sequence, *, candidates: int = 16, seed: int = 0, batch_size: int = 64) -> dict:
    """Quality of ``verifier`` on held-out ``pairs`` (objects with .image, .caption, .negatives).

    Returns:
        ``retrieval_top1``: fraction of captions whose own crop outscores
        ``candidates - 1`` random crops with a different caption (chance ``1/candidates``);
        ``auroc_hard``/``auroc_random``/``auroc``: matched pairs vs (crop, one-attribute-changed
        caption) / (crop, another crop's caption) / both pooled;
        ``gap_mean``: mean over crops of s(correct) − mean s(hallucinated);
        ``gap_positive``: fraction of crops whose correct caption outscores every hallucinated one;
        ``hard_win``: {kind: fraction of (crop, hallucinated caption) pairs of that kind scored below
        the correct caption}, kinds from :func:`mapo.verifier.pairs.negative_kind` (colour, shape,
        glyph, empty, absent): which attribute the verifier cannot see;
        ``s_correct``/``s_hallucinated``/``s_random``: mean scores.
    """
    if len(pairs) < 2:
        raise ValueError(f"evaluate needs at least 2 pairs, got {len(pairs)}")
    rng = random.Random(seed)
    images, text = _embed_pairs(verifier, pairs, batch_size)
    captions = torch.stack([text[p.caption] for p in pairs])  # (M, D)
    sim = captions @ images.T  # (M, M): caption i vs crop j
    correct = sim.diagonal()

    hits, queries = 0, 0
    for i, p in enumerate(pairs):
        others = [j for j, q in enumerate(pairs) if q.caption != p.caption]
        if len(others) < candidates - 1:
            continue
        distractors = rng.sample(others, candidates - 1)
        queries += 1
        hits += int(bool(correct[i] > sim[i, distractors].max()))

    hard, gaps, wins = [], [], []
    wins_by_kind: dict[str, list[float]] = {}
    for i, p in enumerate(pairs):
        if not p.negatives:
            continue
        neg = torch.stack([text[n] for n in p.negatives]) @ images[i]  # (H,)
        hard.append(neg)
        for caption, s in zip(p.negatives, neg):
            wins_by_kind.setdefault(negative_kind(p.caption, caption), []).append(float(bool(correct[i] > s)))
        gaps.append(float(correct[i] - neg.mean()))
        wins.append(float(bool(correct[i] > neg.max())))
    hard_scores = torch.cat(hard) if hard else torch.zeros(0)
    mismatched = []
    for i, p in enumerate(pairs):
        others = [j for j, q in enumerate(pairs) if q.caption != p.caption]
        if others:
            mismatched.append(sim[rng.choice(others), i])  # another crop's caption vs crop i
    if not mismatched:
        raise ValueError("evaluate needs pairs with at least two different captions")
    random_scores = torch.stack(mismatched)
    metrics = {
        "n_pairs": len(pairs),
        "candidates": candidates,
        "retrieval_top1": hits / queries if queries else float("nan"),
        "retrieval_queries": queries,
        "auroc_random": auroc(correct, random_scores),
        "s_correct": float(correct.mean()),
        "s_random": float(random_scores.mean()),
    }
    if hard:
        metrics.update(
            auroc_hard=auroc(correct, hard_scores),
            auroc=auroc(correct, torch.cat([hard_scores, random_scores])),
            gap_mean=sum(gaps) / len(gaps),
            gap_positive=sum(wins) / len(wins),
            s_hallucinated=float(hard_scores.mean()),
            hard_win={kind: sum(w) / len(w) for kind, w in sorted(wins_by_kind.items())},
        )
    return metrics


def evaluate_labels(verifier: Verifier, pairs: Sequence, *, batch_size: int = 64) -> dict:
    """How ``verifier`` scores a tool call's short label against crops of the same held-out images.

    ``pairs``: caption pairs and label pairs (:func:`mapo.verifier.pairs.synth_pairs` with ``label_frac``).
    A *hit* is a label pair's (label, crop of that object); its *misses* are the same label against
    every crop of the same image that does not show the object (other objects, empty cells,
    background), i.e. what a call asking for it could have zoomed on instead.

    Returns:
        ``label_auroc``: P(s(hit) > s(miss)) pooled over images (the question
        ``research/label_score_probe.py`` asks of a policy's zooms); ``label_win``: fraction of
        (crop, wrong label) pairs scored below the crop's own label, a wrong label being another object's
        of its image or its own with the colour or the shape changed;
        ``s_label_hit``/``s_label_miss``: mean scores; ``n_hits``/``n_misses``.
    """
    hits_pairs = [p for p in pairs if p.kind == "label"]
    crops = [p for p in pairs if not is_label_pair(p)]
    if not hits_pairs or not crops:
        raise ValueError(f"evaluate_labels needs label pairs and caption pairs, got {len(hits_pairs)} and {len(crops)}")
    images = verifier.embed_images([p.image for p in hits_pairs + crops], batch_size=batch_size)
    hit_images, crop_images = images[: len(hits_pairs)], images[len(hits_pairs):]
    texts = sorted({p.caption for p in hits_pairs} | {n for p in hits_pairs for n in p.negatives})
    text_emb = dict(zip(texts, verifier.embed_text(texts, batch_size=batch_size)))
    by_group: dict[str, list[int]] = {}
    for j, c in enumerate(crops):
        by_group.setdefault(c.group, []).append(j)
    hit, miss, wins = [], [], []
    for i, p in enumerate(hits_pairs):
        s = float(text_emb[p.caption] @ hit_images[i])
        hit.append(s)
        for j in by_group.get(p.group, []):
            if p.caption != crops[j].caption and p.caption not in crops[j].matches:
                miss.append(float(text_emb[p.caption] @ crop_images[j]))
        for n in p.negatives:
            if n != "empty background":
                wins.append(float(s > float(text_emb[n] @ hit_images[i])))
    if not miss:
        raise ValueError("evaluate_labels found no crop of an image that misses one of its labelled objects")
    return {
        "label_auroc": auroc(torch.tensor(hit), torch.tensor(miss)),
        "label_win": sum(wins) / len(wins) if wins else float("nan"),
        "s_label_hit": sum(hit) / len(hit),
        "s_label_miss": sum(miss) / len(miss),
        "n_hits": len(hit),
        "n_misses": len(miss),
    }


def calibration_groups(verifier: Verifier, pairs: Sequence, *, seed: int = 0, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Scores of each crop against descriptions of four kinds.

    Returns {group: (n,) scores}: ``correct`` (its ground-truth caption),
    ``partial`` (one attribute of one object wrong: the first three hallucinated
    captions), ``wrong`` (another crop's different caption), ``empty`` (an empty
    description: always ``s_missing``).
    """
    rng = random.Random(seed)
    images, text = _embed_pairs(verifier, pairs, batch_size)
    groups: dict[str, list[float]] = {"correct": [], "partial": [], "wrong": []}
    for i, p in enumerate(pairs):
        groups["correct"].append(float(text[p.caption] @ images[i]))
        for neg in p.negatives:
            if neg != "empty background" and p.caption != "empty background":
                groups["partial"].append(float(text[neg] @ images[i]))
        others = [q.caption for q in pairs if q.caption != p.caption]
        if others:
            groups["wrong"].append(float(text[rng.choice(others)] @ images[i]))
    out = {k: torch.tensor(v) for k, v in groups.items()}
    out["empty"] = verifier.score([""], [pairs[0].image]) if pairs else torch.zeros(0)
    return out


def format_distribution(groups: dict[str, torch.Tensor], bins: int = 20, width: int = 40) -> str:
    """A table of quantiles and a text histogram over [-1, 1] for each group of scores."""
    lines = [f"{'group':<9}{'n':>6}{'mean':>8}{'std':>7}{'p5':>7}{'p25':>7}{'p50':>7}{'p75':>7}{'p95':>7}"]
    for name, s in groups.items():
        if s.numel() == 0:
            lines.append(f"{name:<9}{0:>6}")
            continue
        q = torch.quantile(s.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.double)).tolist()
        std = float(s.std()) if s.numel() > 1 else 0.0
        lines.append(f"{name:<9}{s.numel():>6}{float(s.mean()):>8.3f}{std:>7.3f}" + "".join(f"{v:>7.3f}" for v in q))
    lines.append("")
    lines.append("histogram (each row a bin of the cosine; one column per group, bar = share of that group)")
    edges = torch.linspace(-1, 1, bins + 1)
    counts = {k: torch.histc(v.float().clamp(-1, 1), bins=bins, min=-1, max=1) / max(1, v.numel()) for k, v in groups.items()}
    col = max(8, width // max(1, len(groups)))
    lines.append(f"{'bin':>14} " + "".join(f"{k:<{col}}" for k in groups))
    for b in reversed(range(bins)):
        row = [("#" * round(float(counts[k][b]) * (col - 1) * 2)).ljust(col)[:col] for k in groups]
        if any(r.strip() for r in row):
            lines.append(f"[{edges[b]:+.2f},{edges[b + 1]:+.2f}) " + "".join(row))
    return "\n".join(lines)


def throughput(verifier: Verifier, pairs: Sequence, *, batch_size: int = 64, repeats: int = 1) -> float:
    """Pairs per second of ``verifier.score`` on ``pairs`` in batches of ``batch_size``, image cache off.

    Every pair is scored once per repeat after one warm-up batch; the time includes
    preprocessing, tokenising and both encoders.
    """
    if not pairs:
        raise ValueError("throughput needs at least one pair")
    cache, verifier.cache = getattr(verifier, "cache", None), None  # measure the model, not the cache
    try:
        texts, images = [p.caption for p in pairs], [p.image for p in pairs]
        verifier.score(texts[:batch_size], images[:batch_size], batch_size=batch_size)
        start = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(pairs), batch_size):
                verifier.score(texts[i : i + batch_size], images[i : i + batch_size], batch_size=batch_size)
        return repeats * len(pairs) / (time.perf_counter() - start)
    finally:
        verifier.cache = cache
