#!/usr/bin/env bash
# A short fixed-seed SFT (from scratch) and RL (MAPO, from the shipped stage-4 warm start) -> eval run on the
# embedded default, reduced to one digest file: weight hashes, logged metrics, per-sample eval records.
# Run it before and after a restructuring; identical digests mean the same configs give the same numbers.
#   bash research/fixed_seed_digest.sh OUT_DIR     # writes OUT_DIR/digest.txt (about 3 min on 2 cores)
#   bash research/fixed_seed_digest.sh --current-names OLD_DIGEST   # prints a digest made before a renaming
#                                                   # with today's metric and config names (mapo.core.renames)
# MAPO: the mapo command (default `mapo`); PYTHON: a python that can import this checkout (default python3).
set -euo pipefail
python=${PYTHON:-python3}
if [ "${1:-}" = "--current-names" ]; then
  exec $python - "${2:?usage: research/fixed_seed_digest.sh --current-names OLD_DIGEST}" <<'PY'
import json, pathlib, sys
from mapo.core.renames import EVAL_CONFIG_KEYS, current_metric_names
for line in pathlib.Path(sys.argv[1]).read_text().splitlines():
    head, sep, body = line.partition(" ")
    if head.endswith("metrics.jsonl"):
        line = f"{head} {json.dumps(current_metric_names(json.loads(body)), sort_keys=True)}"
    elif head == "eval/metrics":
        metrics = json.loads(body)
        config = metrics.get("run", {}).get("config", {})
        for old, new in EVAL_CONFIG_KEYS.items():
            if old in config:
                config[new] = config.pop(old)
        line = f"{head} {json.dumps(metrics, sort_keys=True, default=str)}"
    print(line)
PY
fi
out=${1:?usage: research/fixed_seed_digest.sh OUT_DIR}
mapo=${MAPO:-mapo}
rm -rf "$out" && mkdir -p "$out"
$mapo sft --config configs/sft_tiny.yaml --out "$out/sft" --no-progress steps=12 log_every=4 eval_every=12 \
  save_every=12 eval.n_teacher_forced=8 eval.n_rollout=8 tensorboard=false >"$out/sft.log" 2>&1
$mapo train --config configs/train_tiny.yaml --out "$out/rl" --no-progress policy=mapo/assets/warmstart_scan steps=3 \
  eval_every=3 save_every=3 data.synth_level=pattern data.n_eval=8 tensorboard=false threads=1 \
  rollout.temperature=1.0 >"$out/rl.log" 2>&1
$mapo eval --model "$out/rl/final" --verifier mapo/assets/verifier --data synth:24:pattern:1000003 \
  --out "$out/eval" --no-progress --threads 1 >"$out/eval.log" 2>&1
$python - "$out" <<'PY'
import hashlib, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
lines = []
def sha(p): return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
for name in ("sft/final/model.safetensors", "rl/final/model.safetensors"):
    lines.append(f"{name} {sha(out / name)}")
# Timing fields differ run to run; everything else must match.
volatile = ("time", "sec", "throughput", "tokens_per_s", "wall", "elapsed", "_s", "mem")
for log in sorted(out.glob("*/metrics.jsonl")):
    for row in map(json.loads, log.read_text().splitlines()):
        keep = {k: v for k, v in row.items() if not any(t in k for t in volatile)}
        lines.append(f"{log.relative_to(out)} {json.dumps(keep, sort_keys=True)}")
# Records may gain fields (e.g. each call's tool and arguments); the digest compares the fields every
# version of the record has, so a new field is not a changed number.
TURN_KEYS = ("bbox_original", "bbox_view", "crop", "description", "error", "label", "semantic_score", "text", "tool_call", "valid")
for row in map(json.loads, (out / "eval/predictions.jsonl").read_text().splitlines()):
    keep = {k: row.get(k) for k in ("id", "prediction", "correct", "semantic")}
    keep["turns"] = [{k: t.get(k) for k in TURN_KEYS} for t in row.get("turns", [])]
    lines.append("eval " + json.dumps(keep, sort_keys=True, default=str))
metrics = json.loads((out / "eval/metrics.json").read_text())
metrics.get("run", {}).pop("model", None)  # the output path
# A setting added at its default (zoom-in alone) changes no number; the config fingerprint still covers the rest.
for protocol in (metrics.get("run", {}).get("protocol", {}), metrics.get("run", {}).get("config", {}).get("rollout", {}).get("protocol", {})):
    protocol.pop("extra_tools", None)
lines.append("eval/metrics " + json.dumps({k: v for k, v in metrics.items() if not any(t in k for t in volatile)}, sort_keys=True, default=str))
(out / "digest.txt").write_text("\n".join(lines) + "\n")
print(f"{len(lines)} lines -> {out / 'digest.txt'}")
PY
