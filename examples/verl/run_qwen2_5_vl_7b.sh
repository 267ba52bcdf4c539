#!/usr/bin/env bash
# MAPO on verl 0.9.1: Qwen2.5-VL-7B-Instruct + a local CLIP verifier, DeepEyes-format parquet.
# One node of 8 GPUs (vLLM rollout, FSDP actor). Everything is read from local paths:
#   MODEL       a local Qwen2.5-VL-7B-Instruct directory
#   MAPO_VERIFIER  a local CLIP directory (e.g. clip-vit-large-patch14), read by agent_loop.yaml
#   TRAIN, VAL  DeepEyes-format parquet files (data_source, prompt, images, reward_model, extra_info)
# Extra hydra overrides are appended: ./run_qwen2_5_vl_7b.sh trainer.n_gpus_per_node=4
# Keep one override per line: tests/test_verl_plugin.py checks them against verl's config schema.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${MODEL:?set MODEL to a local Qwen2.5-VL-7B-Instruct directory}"
: "${MAPO_VERIFIER:?set MAPO_VERIFIER to a local CLIP directory}"
: "${TRAIN:?set TRAIN to a DeepEyes-format parquet}"
: "${VAL:?set VAL to a DeepEyes-format parquet}"
export MAPO_VERIFIER

python -m mapo.integrations.verl.main \
    algorithm.adv_estimator=mapo \
    +algorithm.mapo.beta=0.4 \
    +algorithm.mapo.lam=0.95 \
    algorithm.use_kl_in_reward=false \
    trainer.use_v1=false \
    data.train_files="$TRAIN" \
    data.val_files="$VAL" \
    data.image_key=images \
    data.prompt_key=prompt \
    data.return_raw_chat=true \
    data.train_batch_size=256 \
    data.max_prompt_length=8192 \
    data.max_response_length=16384 \
    data.filter_overlong_prompts=true \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=false \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1 \
    actor_rollout_ref.rollout.multi_turn.enable=true \
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns=5 \
    actor_rollout_ref.rollout.agent.default_agent_loop=mapo_zoom_agent \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$HERE/agent_loop.yaml" \
    reward.custom_reward_function.path=pkg://mapo.integrations.verl.reward \
    reward.custom_reward_function.name=compute_score \
    trainer.logger='["console","tensorboard"]' \
    trainer.project_name=mapo \
    trainer.experiment_name=qwen2_5_vl_7b_mapo \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.save_freq=20 \
    trainer.test_freq=10 \
    trainer.total_epochs=1 \
    "$@"
