"""Training diagnostics of a compare's runs: per arm, the mean over seeds of each logged key over the first and
the last 10 steps (share of zero-variance groups, sampled first-zoom hit rate, found rate, semantic score...).

    python research/compare_diagnostics.py runs/compare_distractors [KEY ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("zero_var_group_frac", "hit_rate", "found_rate", "accuracy", "semantic_mean", "adv_var_tool_tokens")


def window_means(run_dir: Path, key: str, width: int = 10) -> tuple[float, float] | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r[key] for r in rows if "time_step" in r and r.get(key) is not None]
    return (float(np.mean(values[:width])), float(np.mean(values[-width:]))) if values else None


def main(argv: list[str]) -> None:
    out, keys = Path(argv[0]), argv[1:] or KEYS
    print("| arm | runs | " + " | ".join(f"{k} (first → last 10 steps)" for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for arm_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "start"):
        runs = sorted(d for d in arm_dir.glob("seed*") if (d / "summary.json").is_file())
        if not runs:
            continue
        cells = []
        for key in keys:
            pairs = [w for w in (window_means(d, key) for d in runs) if w is not None]
            cells.append("n/a" if not pairs else f"{np.mean([a for a, _ in pairs]):.3f} → {np.mean([b for _, b in pairs]):.3f}")
        print(f"| {arm_dir.name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
