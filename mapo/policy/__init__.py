"""Policies: a tiny offline Qwen2.5-VL builder and loading of local checkpoints.

See ``docs/policy.md``.
"""

from mapo.policy.load import LoraOptions, Policy, apply_lora, load_policy, missing_files
from mapo.policy.tiny import PRESETS, TinyPreset, build_tiny_policy, count_params



def load_default(*args, **kwargs):
    """The shipped warm-start policy (:func:`mapo.policy.default.load_default`)."""
    from mapo.policy.default import load_default as _load_default

    return _load_default(*args, **kwargs)


__all__ = [
    "PRESETS",
    "LoraOptions",
    "Policy",
    "TinyPreset",
    "apply_lora",
    "build_tiny_policy",
    "count_params",
    "load_default",
    "load_policy",
    "missing_files",
]
