"""Semantic verifiers: score how well a description matches the image a tool returned.

``load_verifier(path)`` loads any local transformers CLIP (or SigLIP) directory,
including the tiny CLIP that ``mapo verifier train`` writes; see
:mod:`mapo.verifier.base` for the interface and ``docs/verifier.md`` for usage.
The trainer (:mod:`mapo.verifier.train`) is imported on demand.
"""

from mapo.verifier.base import S_MISSING_DEFAULT, ScoreResult, Verifier, prepare_image
from mapo.verifier.clip import ClipVerifier, check_model_dir, load_verifier

__all__ = [
    "S_MISSING_DEFAULT",
    "ClipVerifier",
    "ScoreResult",
    "Verifier",
    "check_model_dir",
    "load_verifier",
    "prepare_image",
]
