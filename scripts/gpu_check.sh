#!/usr/bin/env bash
# GPU check (docs/scale_out.md): real-shaped Qwen2.5-VL-7B and Qwen3-VL-8B, full depth, random
# weights in bf16: rollout tokens/s and peak memory at batch 8/32/64, one MAPO update with LoRA
# and one full-parameter update. Writes runs/gpu_check.json (or $1). Needs one CUDA GPU
# (an 80 GB-class card for the full-parameter AdamW step of an 8B model: see the doc).
# Budget: under 8 minutes on an H100/H200; "timeout" stops it at 8 minutes regardless.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-runs/gpu_check.json}"
cd "$HERE/.."
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 480 python scripts/gpu_check.py --out "$OUT" "${@:2}"
