"""scripts/gpu_check.py runs end to end on the CPU (--dry-run: narrow widths, real vocabulary)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_plays_two_zooms_updates_both_ways_and_writes_the_json(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "gpu_check.json"
    assert _script().main(["--dry-run", "--shapes", "qwen3_vl_8b", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    entry = result["shapes"]["qwen3_vl_8b"]
    assert result["dry_run"] is True
    (row,) = entry["rollout"]
    assert row["batch"] == 2 and row["episodes"] == 2 and row["zooms_per_episode"] == 2.0
    assert row["generated_tokens"] > 0 and row["tokens_per_s"] > 0
    lora, full = entry["update"]
    assert (lora["kind"], full["kind"]) == ("lora", "full") and lora["loss_finite"] and full["loss_finite"]
    assert 0 < lora["trainable_params"] < full["trainable_params"] == entry["params"]
