"""The RL run's models: device, the policy to train, the KL reference, the verifier, the protocol they play.

:func:`load_models` is the model part of :func:`mapo.train.rl.setup`: it loads the
policy (from the config's starting checkpoint, or from the newest run checkpoint on
resume), prepares it for fine-tuning and data parallelism, loads the reference
(only when ``loss.kl_coef > 0``) and the verifier, and settles the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mapo.agent.protocol import note_to_stderr, protocol_for_policy
from mapo.engine.rollout import RolloutConfig
from mapo.train import distributed as dp
from mapo.train.finetune import load_dtype, prepare_policy


@dataclass
class Models:
    """What :func:`load_models` returns."""

    policy: Any  # mapo.policy.Policy being trained, its protocol settled
    trainer: Any  # the training forward (dp.LogprobForward of policy.model; DDP-wrapped under torchrun)
    reference: Any  # frozen starting policy (KL), or None
    verifier: Any  # mapo.verifier Verifier, or None
    rollout_cfg: RolloutConfig  # cfg.rollout with the settled protocol


def resolve_device(name: str, info: dp.DistInfo | None = None) -> torch.device:
    """The run's device; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    info = dp.DistInfo() if info is None else info
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:  # the CPU build of torch that `make setup` installs by default
            raise ValueError(f"device {name!r} asked for, but this torch ({torch.__version__}) is a CPU build: install "
                             "the CUDA build with `make setup GPU=cu128` (README, \"GPU\"), or use device: cpu")
        raise ValueError(f"device {name!r} asked for, but torch {torch.__version__} sees no GPU (driver, "
                         "CUDA_VISIBLE_DEVICES?); or use device: cpu")
    if device.type == "cuda" and info.distributed:
        if device.index is not None:
            raise ValueError(f"device {name!r} names one GPU, but under torchrun each rank uses cuda:LOCAL_RANK: "
                             "set device: cuda (or auto)")
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {info.local_rank} has no GPU ({torch.cuda.device_count()} visible): launch "
                             f"at most {torch.cuda.device_count()} processes per node")
        device = torch.device("cuda", info.local_rank)
    return device


def check_policy_path(policy: str) -> None:
    """Fail at start, naming what is wrong, unless ``policy`` is 'default' or a loadable checkpoint directory."""
    from mapo.policy import missing_files

    if policy == "default":
        import mapo.policy

        if not hasattr(mapo.policy, "load_default"):
            raise ValueError("policy: 'default' needs a shipped warm start, which this version lacks; give a checkpoint "
                             "directory (e.g. runs/sft/final from `mapo sft`)")
        return
    from mapo.policy.default import resolve_policy_dir

    path = resolve_policy_dir(policy)  # shipped:NAME and mapo/assets/NAME mean the shipped checkpoint
    if not path.is_dir():
        raise ValueError(f"policy {policy!r} is not a directory (expected a local checkpoint, e.g. runs/sft/final)")
    missing = missing_files(path)
    if missing:
        raise ValueError(f"policy {policy!r} is not a policy checkpoint directory: missing {', '.join(missing)}")


def load_start_policy(cfg: Any, device: torch.device, dtype: str | None = None):
    """The starting policy of ``cfg.policy`` ('default' or a checkpoint directory) on ``device``, in ``dtype``
    (default ``cfg.policy_dtype``; the shipped default is float32)."""
    if cfg.policy == "default":
        import mapo.policy

        policy = mapo.policy.load_default()
        policy.model.to(device)
        return policy
    from mapo.policy.default import load_named_policy

    return load_named_policy(cfg.policy, dtype=cfg.policy_dtype if dtype is None else dtype, device=device)


def checked_verifier_dir(verifier: str | None) -> Path | None:
    """The verifier's directory, checked to hold a loadable model; None without a verifier."""
    from mapo.verifier.clip import check_model_dir
    from mapo.verifier.default import resolve_verifier_dir

    # 'default', shipped:NAME and mapo/assets/NAME mean the shipped verifier, whatever the current folder.
    verifier_dir = resolve_verifier_dir(verifier) if verifier is not None else None
    if verifier_dir is not None:
        check_model_dir(verifier_dir)
    return verifier_dir


def load_models(cfg: Any, ckpt: Path | None, device: torch.device, verifier_dir: Path | None, info: dp.DistInfo) -> Models:
    """The policy (from ``ckpt`` when resuming, else ``cfg.policy``), its training forward, reference and verifier."""
    from mapo.policy import load_policy
    from mapo.verifier.clip import load_verifier

    dtype = load_dtype(cfg.policy_dtype, cfg.finetune)  # float32 master weights for full fine-tuning
    policy = load_policy(ckpt / "model", dtype=dtype, device=device) if ckpt else load_start_policy(cfg, device, dtype)
    policy = prepare_policy(policy, cfg.finetune)  # LoRA adapters (a LoRA checkpoint keeps its own), checkpointing
    policy.model.train()
    trainer = dp.wrap_for_training(dp.LogprobForward(policy.model), info)  # DDP under torchrun: replicas start equal
    reference = None
    if cfg.loss.kl_coef > 0:
        reference = load_start_policy(cfg, device, dtype)
        reference.model.eval().requires_grad_(False)
    # No embedding cache: a score must not depend on which batch first embedded its crop (resume exactness).
    verifier = load_verifier(verifier_dir, device=device, cache_images=False) if verifier_dir else None
    # Prompt the policy as it was trained (its mapo_protocol.json) unless the config sets a protocol;
    # its checkpoints record the protocol used here, so a resumed run resolves the same way.
    protocol = protocol_for_policy(cfg.rollout.protocol, policy.protocol, on_conflict=note_to_stderr if info.is_main else None)
    policy.protocol = protocol
    return Models(policy, trainer, reference, verifier, dataclasses.replace(cfg.rollout, protocol=protocol))


__all__ = ["Models", "check_policy_path", "checked_verifier_dir", "load_models", "load_start_policy", "resolve_device"]
