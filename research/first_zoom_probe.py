"""Where does a policy's first zoom land among distractors? (`mapo eval` predictions + the V* files).

For each sample, the object that the first crop holds (the one with the largest IoU with the crop) is
classed as: the asked object, another object of the asked colour, of the asked shape, an object
sharing neither, or empty background; with the rates a policy that picks one object uniformly at
random would get.

    python research/first_zoom_probe.py EVAL_DIR DATA_DIR     # DATA_DIR: the V* folder that was evaluated
    python research/first_zoom_probe.py EVAL_DIR DATA_DIR --view-scan   # also: how right a view-scan policy's scan is

``--view-scan`` reads the first thought of a policy trained with ``data.view_scan`` ("(31, 3) red square.
(59, 3) empty. ... The red square is at (31, 3).") against the truth: the share of object cells it names
exactly, with the right colour, with the right shape; of empty cells it calls empty; and of samples whose
stated place is the scan's own entry for the asked object (the copy step).
"""

from __future__ import annotations

import argparse
import json
import re
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


def scan_accuracy(eval_dir: Path, boxes: dict[str, list[dict]], view_scale: float = 0.25, cell: int = 28) -> dict:
    """How right the view scan in each record's first turn is (see the module docstring)."""
    counts = Counter()
    for line in (eval_dir / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        counts["samples"] += 1
        truth = {}
        for b in boxes[record["id"]]:  # the top-left corner the scan writes for the object's cell
            cx, cy = (b["x1"] + b["x2"]) / 2 * view_scale, (b["y1"] + b["y2"]) / 2 * view_scale
            truth[(int(cx // cell) * cell + 3, int(cy // cell) * cell + 3)] = b["label"]
        text = record["turns"][0]["text"] if record["turns"] else ""
        said = {(int(x), int(y)): label for x, y, label in re.findall(r"\((\d+), (\d+)\) (empty|\w+ \w+)\.", text)}
        corners = sorted({k for k in truth} | {(x, y) for x in (3, 31, 59, 87) for y in (3, 31, 59, 87)})
        for place in corners:
            true_label, said_label = truth.get(place, "empty"), said.get(place)
            if true_label == "empty":
                counts["empty"] += 1
                counts["empty_right"] += said_label == "empty"
                continue
            counts["objects"] += 1
            counts["object_right"] += said_label == true_label
            if said_label and said_label != "empty":
                counts["colour_right"] += said_label.split()[0] == true_label.split()[0]
                counts["shape_right"] += said_label.split()[-1] == true_label.split()[-1]
        target = next(b["label"] for b in boxes[record["id"]] if b["is_target"])
        stated = re.search(r"The (\w+ \w+) is at \((\d+), (\d+)\)", text)
        counts["copy_right"] += bool(stated) and said.get((int(stated.group(2)), int(stated.group(3)))) == target
    n, objects, empty = counts["samples"], max(counts["objects"], 1), max(counts["empty"], 1)
    return {"samples": n, "object cells named exactly": counts["object_right"] / objects,
            "object cells: colour right": counts["colour_right"] / objects,
            "object cells: shape right": counts["shape_right"] / objects,
            "empty cells called empty": counts["empty_right"] / empty,
            "stated place = the scan's entry for the asked object": counts["copy_right"] / max(n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--turn", type=int, default=0, help="which zoom (0 = first)")
    parser.add_argument("--view-scan", action="store_true", help="also score the first thought's view scan")
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
    if args.view_scan:
        for name, value in scan_accuracy(args.eval_dir, boxes).items():
            print(f"  scan: {name}: {value:.3f}" if name != "samples" else f"view scan of {value} samples")


if __name__ == "__main__":
    main()
