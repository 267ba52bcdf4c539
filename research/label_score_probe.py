"""Does the verifier's score of a call's *label* (or of the next turn's description) against its crop tell a hit from a miss?

MAPO with ``semantic_target=label`` rewards a zoom whose crop matches what the call said it
expected to see ("red square"). That credit can teach *where* to zoom only if the verifier
scores a crop of the named object above a crop of something else. This probe reads an eval
directory (``mapo eval`` records with crops), scores every valid call's label against its
saved crop, and compares hits (IoU >= 0.5 with the target) with misses. ``--target
description`` scores the description the policy wrote of the view instead (MAPO's default).

    python research/label_score_probe.py EVAL_DIR [--target label|description] [--verifier mapo/assets/verifier]

Prints the mean label score of hits and of misses, their difference, and the AUC (the chance
that a random hit scores above a random miss; 0.5 = no separation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from mapo.metrics.records import read_jsonl
from mapo.verifier.clip import load_verifier


def label_scores(eval_dir: Path, verifier_dir: str, target: str = "label") -> tuple[list[float], list[float]]:
    """``target``-vs-crop scores of valid calls: (hits, misses), a hit being IoU >= 0.5 with a target box."""
    records = read_jsonl(eval_dir / "predictions.jsonl").records
    labels, crops, hit = [], [], []
    for rec in records:
        ious = iter(rec.iou)  # one IoU per valid crop, in turn order
        for turn in rec.turns:
            if not (turn.valid and turn.crop and turn.bbox_original is not None):
                continue
            iou = next(ious, None)
            text = turn.label if target == "label" else turn.description
            if iou is None or not text:
                continue
            labels.append(text)
            crops.append(Image.open(eval_dir / turn.crop).convert("RGB"))
            hit.append(iou >= 0.5)
    scores = load_verifier(verifier_dir).score(labels, crops).tolist()
    return [s for s, h in zip(scores, hit) if h], [s for s, h in zip(scores, hit) if not h]


def auc(pos: list[float], neg: list[float]) -> float:
    """P(random positive > random negative), ties counting one half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--verifier", default="mapo/assets/verifier")
    parser.add_argument("--target", choices=("label", "description"), default="label")
    args = parser.parse_args()
    hits, misses = label_scores(args.eval_dir, args.verifier, args.target)
    if not hits or not misses:
        raise SystemExit(f"need both hits and misses, got {len(hits)} hits and {len(misses)} misses")
    out = {
        "hits": len(hits), "misses": len(misses),
        "mean_hit": sum(hits) / len(hits), "mean_miss": sum(misses) / len(misses),
        "auc": auc(hits, misses),
    }
    out["difference"] = out["mean_hit"] - out["mean_miss"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
