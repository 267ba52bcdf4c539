"""What a checkpoint directory says about how it should be run, read from its JSON files alone.

``mapo eval`` takes its pixel budgets and token limits from here when it evaluates a
checkpoint (:func:`mapo.eval.config.model_layer`), so a 7B model sees a 1600x1200 image at
the resolution its own processor allows, not at the tiny task's 224x224 budget. Nothing
is loaded but JSON (``--show-config`` reads it without touching the weights):

- the image processor's settings, where transformers 5 reads them: the ``image_processor``
  section of ``processor_config.json`` when there is one (``save_pretrained`` writes it),
  else ``preprocessor_config.json`` (Qwen's released files): the pixel range,
  ``size.shortest_edge`` / ``size.longest_edge`` or else ``min_pixels`` / ``max_pixels``,
  and ``patch_size`` x ``merge_size``;
- ``generation_config.json``: ``max_new_tokens`` when the checkpoint sets one (Qwen's
  released checkpoints do not);
- ``config.json``: the text model's context, ``max_position_embeddings``.

A key that is absent stays None; a file that is not valid JSON is a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSettings:
    """The run settings a checkpoint carries (None: the checkpoint does not say)."""

    min_pixels: int | None = None  # smallest image area its processor takes without resizing
    max_pixels: int | None = None  # largest
    factor: int | None = None  # patch x merge: image sides are multiples of this (28 or 32 px)
    max_new_tokens: int | None = None  # generation_config.json's limit on generated tokens
    context: int | None = None  # max_position_embeddings of the text model

    def sources(self) -> dict[str, str]:
        """Which file each known setting came from (for the note ``mapo eval`` prints)."""
        where = {"min_pixels": "the image processor", "max_pixels": "the image processor",
                 "factor": "the image processor", "max_new_tokens": "generation_config.json",
                 "context": "config.json"}
        return {k: v for k, v in where.items() if getattr(self, k) is not None}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from mapo.core.errors import ModelError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:  # a hostile file nested thousands deep
        raise ModelError(f"{path} is nested too deeply to be a model file") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def _positive_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_model_settings(path: str | Path) -> ModelSettings:
    """The settings of the checkpoint directory ``path`` (all None for a directory without these files)."""
    root = Path(path)
    nested = _read_json(root / "processor_config.json").get("image_processor")
    pre = nested if isinstance(nested, dict) else _read_json(root / "preprocessor_config.json")
    size = pre.get("size") if isinstance(pre.get("size"), dict) else {}
    lo = _positive_int(size.get("shortest_edge")) or _positive_int(pre.get("min_pixels"))
    hi = _positive_int(size.get("longest_edge")) or _positive_int(pre.get("max_pixels"))
    if lo is not None and hi is not None and lo > hi:
        from mapo.core.errors import ModelError

        raise ModelError(f"{root}: the image processor's min <= max pixels is broken ({lo} > {hi}); fix its "
                         "size.shortest_edge / size.longest_edge (or min_pixels / max_pixels)")
    patch, merge = _positive_int(pre.get("patch_size")), _positive_int(pre.get("merge_size"))
    config = _read_json(root / "config.json")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    generation = _read_json(root / "generation_config.json")
    return ModelSettings(
        min_pixels=lo,
        max_pixels=hi,
        factor=patch * merge if patch and merge else None,
        max_new_tokens=_positive_int(generation.get("max_new_tokens")),
        context=_positive_int(text.get("max_position_embeddings")),
    )


__all__ = ["ModelSettings", "read_model_settings"]
