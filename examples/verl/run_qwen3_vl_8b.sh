#!/usr/bin/env bash
# MAPO on verl: Qwen3-VL-8B-Instruct (or a mapo-trained Qwen3-VL directory) + a local CLIP verifier.
# Same launch as run_qwen2_5_vl_7b.sh (read its header for the variables); only the model and the
# run name differ. Nothing Qwen3-specific is set here: the agent loop reads the protocol and the
# patch factor (16 x 2 = 32 px) from the policy directory (mapo_protocol.json, else the processor).
# Needs a vLLM that serves Qwen3-VL (0.11 or later) in verl's environment.
#   MODEL  a local Qwen3-VL-8B-Instruct directory
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${MODEL:?set MODEL to a local Qwen3-VL-8B-Instruct directory}"
exec "$HERE/run_qwen2_5_vl_7b.sh" trainer.experiment_name=qwen3_vl_8b_mapo "$@"
