#!/usr/bin/env bash
# The shipped warm start's figures through the public path a user runs:
#   mapo data synth (V* files of the test set: seed 2000003, never trained or chosen on) -> mapo eval -> metrics.json.
# Usage: bash scripts/warmstart_figures.sh [MODEL_DIR] [N] [SEED]
#   (default: mapo/assets/warmstart, 400 samples, the test seed 2000003; 1000003 is the validation seed)
# Prints one line per level: accuracy, first-zoom hit rate, found rate, tool calls per sample. About 4 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-mapo/assets/warmstart}
N=${2:-400}
SEED=${3:-2000003}
OUT=runs/figures/$(basename "$MODEL")_s$SEED
MAPO=${MAPO:-.venv/bin/mapo}
for LEVEL in pattern pattern_distractors; do
  "$MAPO" data synth --out "$OUT/data_$LEVEL" --n "$N" --level "$LEVEL" --seed "$SEED" --format vstar >/dev/null
  "$MAPO" eval --data "$OUT/data_$LEVEL/vstar" --model "$MODEL" --out "$OUT/eval_$LEVEL" --overwrite --no-progress \
    --threads 1 >/dev/null 2>&1
  .venv/bin/python - "$OUT/eval_$LEVEL/metrics.json" "$LEVEL" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
t = m["tools"]
print(f"{sys.argv[2]:<20} n={t['n']}  accuracy={t['accuracy']:.3f}  first_zoom_hit={t['first_crop_hit_rate']:.3f}  found={t['found_rate']:.3f}  "
      f"tool_calls/sample={t['tool_calls_per_sample']:.2f}")
PY
done
