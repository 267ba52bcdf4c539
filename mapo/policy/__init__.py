"""Policies: a tiny offline Qwen2.5-VL / Qwen3-VL builder, loading of local checkpoints, model backends.

See ``docs/policy.md``.
"""

from mapo.policy.backend import SUPPORTED_MODEL_TYPES, backend_for
from mapo.policy.load import LoraOptions, Policy, apply_lora, load_policy, missing_files
from mapo.policy.tiny import PRESETS, TinyPreset, build_tiny_policy, count_params



def load_default(*args, **kwargs):
    """The shipped warm-start policy (:func:`mapo.policy.default.load_default`)."""
    from mapo.policy.default import load_default as _load_default

    return _load_default(*args, **kwargs)


__all__ = [
    "PRESETS",
    "SUPPORTED_MODEL_TYPES",
    "LoraOptions",
    "Policy",
    "TinyPreset",
    "apply_lora",
    "backend_for",
    "build_tiny_policy",
    "count_params",
    "load_default",
    "load_policy",
    "missing_files",
]
