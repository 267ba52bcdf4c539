"""research/first_zoom_probe.py: where a first zoom lands, and a view scan's accuracy, on records made by hand."""

import json

from first_zoom_probe import classify, scan_accuracy

# A 448 px canvas seen at 112 px: the asked red square in the top-left cell, a red circle and a blue square.
BOXES = [
    {"x1": 14, "y1": 14, "x2": 98, "y2": 98, "label": "red square", "is_target": True},
    {"x1": 126, "y1": 14, "x2": 210, "y2": 98, "label": "red circle", "is_target": False},
    {"x1": 14, "y1": 126, "x2": 98, "y2": 210, "label": "blue square", "is_target": False},
]


def test_classify_names_what_the_crop_holds():
    assert classify(BOXES, (0, 0, 112, 112)) == "asked object"
    assert classify(BOXES, (112, 0, 224, 112)) == "asked colour"
    assert classify(BOXES, (0, 112, 112, 224)) == "asked shape"
    assert classify(BOXES, (336, 336, 448, 448)) == "empty"


def test_scan_accuracy_by_hand(tmp_path):
    # Right about the red square (and copies its place), calls the red circle "red triangle" (colour right,
    # shape wrong), misses the blue square ("empty"), calls two empty cells empty and one an object, and says
    # nothing of the other 10 (unspoken = not right): 2 of 13 empty cells right.
    scan = ("I see: (3, 3) red square. (31, 3) red triangle. (59, 3) empty. (87, 3) empty. (3, 31) empty. "
            "(87, 87) green circle. "
            "The red square is at (3, 3).")
    record = {"id": "s0", "turns": [{"text": f"<think>{scan}</think>"}]}
    (tmp_path / "predictions.jsonl").write_text(json.dumps(record) + "\n")
    got = scan_accuracy(tmp_path, {"s0": BOXES})
    assert got["object cells named exactly"] == 1 / 3
    assert got["object cells: colour right"] == 2 / 3 and got["object cells: shape right"] == 1 / 3
    assert got["empty cells called empty"] == 2 / 13
    assert got["stated place = the scan's entry for the asked object"] == 1.0
