#!/usr/bin/env bash
# The shipped warm start's held-out figures through the public path a user runs:
#   mapo data synth (V* files, seed 1000003, held out from training) -> mapo eval -> metrics.json.
# Usage: bash scripts/warmstart_figures.sh [MODEL_DIR] [N]   (default: mapo/assets/warmstart, 200 samples)
# Prints one line per level: accuracy, first-zoom hit rate, tool calls per sample. About 3 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-mapo/assets/warmstart}
N=${2:-200}
OUT=runs/figures/$(basename "$MODEL")
MAPO=${MAPO:-.venv/bin/mapo}
for LEVEL in pattern pattern_distractors; do
  "$MAPO" data synth --out "$OUT/data_$LEVEL" --n "$N" --level "$LEVEL" --seed 1000003 --format vstar >/dev/null
  "$MAPO" eval --data "$OUT/data_$LEVEL/vstar" --model "$MODEL" --out "$OUT/eval_$LEVEL" --overwrite --no-progress \
    --threads 1 >/dev/null 2>&1
  .venv/bin/python - "$OUT/eval_$LEVEL/metrics.json" "$LEVEL" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
t = m["tools"]
print(f"{sys.argv[2]:<20} n={t['n']}  accuracy={t['accuracy']:.3f}  first_zoom_hit={t['first_crop_hit_rate']:.3f}  "
      f"tool_calls/sample={t['tool_calls_per_sample']:.2f}")
PY
done
