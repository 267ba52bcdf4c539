"""Where does a policy's first zoom land among distractors? (`mapo eval` predictions + the V* files).

For each sample, the object that the first crop holds (the one with the largest IoU with the crop) is
classed as: the asked object, another object of the asked colour, of the asked shape, an object
sharing neither, or empty background; with the rates a policy that picks one object uniformly at
random would get.

    python research/first_zoom_probe.py EVAL_DIR DATA_DIR     # DATA_DIR: the V* folder that was evaluated
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def boxes_of(data_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for path in data_dir.rglob("*.json"):
        record = json.loads(path.read_text())
        if "mapo" in record:
            out[record["mapo"]["id"]] = record["mapo"]["boxes"]
    return out


def classify(boxes: list[dict], crop) -> str:
    best = max(boxes, key=lambda b: iou(crop, (b["x1"], b["y1"], b["x2"], b["y2"])))
    if iou(crop, (best["x1"], best["y1"], best["x2"], best["y2"])) <= 0.05:
        return "empty"
    target = next(b for b in boxes if b["is_target"])
    if best is target:
        return "asked object"
    colour, shape = target["label"].split()
    b_colour, b_shape = best["label"].split()
    if b_colour == colour:
        return "asked colour"
    if b_shape == shape:
        return "asked shape"
    return "other object"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--turn", type=int, default=0, help="which zoom (0 = first)")
    args = parser.parse_args()
    boxes = boxes_of(args.data_dir)
    counts, chance = Counter(), Counter()
    n = 0
    for line in (args.eval_dir / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        calls = [t for t in record["turns"] if t.get("tool_call") and t.get("bbox_original")]
        objs = boxes[record["id"]]
        n += 1
        target = next(b for b in objs if b["is_target"])
        colour, shape = target["label"].split()
        for b in objs:  # a uniform pick among the objects
            c, s = b["label"].split()
            kind = "asked object" if b is target else "asked colour" if c == colour else "asked shape" if s == shape else "other object"
            chance[kind] += 1 / len(objs)
        if len(calls) <= args.turn:
            counts["no zoom"] += 1
            continue
        counts[classify(objs, calls[args.turn]["bbox_original"])] += 1
    print(f"{n} samples, zoom {args.turn + 1}")
    for kind in ("asked object", "asked colour", "asked shape", "other object", "empty", "no zoom"):
        print(f"  {kind:13s} {counts[kind] / n:6.3f}   uniform pick among objects {chance[kind] / n:6.3f}")


if __name__ == "__main__":
    main()
