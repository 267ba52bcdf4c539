"""What a training run updates and how it saves memory: full fine-tuning or LoRA, gradient checkpointing.

:class:`FinetuneConfig` is the ``finetune`` section of ``mapo train`` (and of ``mapo sft``);
:func:`prepare_policy` applies it to a loaded policy. Memory per GPU at real widths:
docs/training.md, "Memory".

- ``method: full`` trains every weight (optionally with the vision tower frozen). Its
  weights are float32 (``policy_dtype: auto``): AdamW's update of a bfloat16 weight
  loses most of a small step to rounding, so the master weights stay in float32 and
  ``amp: bf16`` runs the forward in bfloat16 (autocast).
- ``method: lora`` adds peft LoRA adapters to the language model's projections; the
  base weights stay frozen in the checkpoint's own dtype (bfloat16 for a published
  checkpoint) and the adapters are float32 (peft's default), so the optimiser state is
  the adapters' only. A LoRA run's checkpoints and ``final/`` hold the adapter alone
  (``adapter_config.json``, ``adapter_model.safetensors``, the processor files and
  ``mapo_protocol.json``); :func:`mapo.policy.load_policy` loads such a directory onto
  the base checkpoint it names (an absolute path), so resume, ``mapo eval`` and
  ``mapo train policy=...`` read it like any policy.
- ``gradient_checkpointing`` recomputes each decoder layer's activations in the
  backward pass (transformers' non-reentrant checkpointing) instead of keeping them:
  activation memory of one layer instead of all, for about one more forward of
  compute. It changes no number (``tests/test_finetune.py``). Rollouts run the model
  in eval mode, where checkpointing is off and the KV cache works as usual.

LoRA dropout defaults to 0: the policy-gradient ratio compares the training forward
with the rollout's log-probs, and dropout in the training forward alone would make
the ratio differ from 1 on the first epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mapo.core.config import knob

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """Which weights training updates (full or LoRA) and activation memory (gradient checkpointing)."""

    method: Literal["full", "lora"] = knob("full", "full: train every weight (float32 master weights); lora: train "
                                                   "peft LoRA adapters on the language model, base frozen")
    lora_r: int = knob(16, "LoRA rank r")
    lora_alpha: int = knob(32, "LoRA scale numerator: the update is (alpha / r) * B A")
    lora_dropout: float = knob(0.0, "dropout on the LoRA input; keep 0 for RL (it would make the training forward "
                                    "differ from the rollout's log-probs)")
    lora_targets: tuple[str, ...] = knob(LORA_TARGETS, "language-model projections that get adapters (the vision "
                                                       "tower never does)")
    freeze_vision: bool = knob(False, "full: keep the vision tower (and its merger) fixed")
    gradient_checkpointing: bool = knob(False, "recompute each layer's activations in the backward pass: less "
                                               "memory, about one more forward of compute, same numbers")

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora"):
            raise ValueError(f"finetune.method must be full or lora, got {self.method!r}")
        if self.lora_r < 1:
            raise ValueError(f"finetune.lora_r must be >= 1, got {self.lora_r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"finetune.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"finetune.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            raise ValueError("finetune.lora_targets must name at least one projection (e.g. q_proj)")


def load_dtype(policy_dtype: str, finetune: FinetuneConfig) -> str:
    """The dtype to load the policy in: ``policy_dtype``, whose ``auto`` means float32 master weights for
    full fine-tuning and the checkpoint's own dtype for LoRA (frozen base; adapters are float32)."""
    if policy_dtype != "auto":
        return policy_dtype
    return "float32" if finetune.method == "full" else "auto"


def is_adapter(model: Any) -> bool:
    """Whether ``model`` is a peft model (its trainable weights are adapters)."""
    return hasattr(model, "peft_config")


def prepare_policy(policy: Any, cfg: FinetuneConfig) -> Any:
    """``policy`` ready to train as ``cfg`` says; returns the (possibly new) :class:`mapo.policy.Policy`.

    A policy that is already a LoRA model (a LoRA run's checkpoint, loaded with its adapter
    trainable) keeps its adapter under ``method: lora``; under ``method: full`` the adapter is
    merged into the base weights first.
    """
    if cfg.method == "lora" and not is_adapter(policy.model):
        policy = _add_lora(policy, cfg)
    elif cfg.method == "full" and is_adapter(policy.model):
        policy = dataclasses.replace(policy, model=policy.model.merge_and_unload())
    if cfg.method == "lora":  # only the adapters train (an adapter loaded for inference comes frozen)
        for name, p in policy.model.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        policy.model.requires_grad_(True)
        if cfg.freeze_vision:
            vision_tower(policy.model).requires_grad_(False)
    if cfg.gradient_checkpointing:
        model = policy.model
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; older: the alias
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy


def vision_tower(model: Any) -> Any:
    """The vision encoder (with its merger) of a Qwen-VL model, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.visual


def _add_lora(policy: Any, cfg: FinetuneConfig) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("finetune.method lora needs peft: pip install -c constraints.txt 'mapo[lora]'") from None
    model = policy.model
    if policy.path is not None:  # the adapter records its base by this name: absolute, so it loads from anywhere
        model.name_or_path = str(Path(policy.path).resolve())
    # A regex keeps the vision tower's projections (also named q/k/v/... in some towers) out.
    config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=rf".*language_model.*\.({'|'.join(cfg.lora_targets)})",
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    return dataclasses.replace(policy, model=peft_model)


def parameter_counts(model: Any) -> dict[str, int]:
    """``{"params": all, "trainable": those with requires_grad}`` (element counts)."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"params": total, "trainable": trainable}


__all__ = ["LORA_TARGETS", "FinetuneConfig", "is_adapter", "load_dtype", "parameter_counts", "prepare_policy",
           "vision_tower"]
