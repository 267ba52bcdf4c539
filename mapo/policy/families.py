"""The model families mapo supports: one :class:`ModelFamily` record per ``config.json`` ``model_type``.

Every place that depends on the model family reads this registry instead of branching
on names: :func:`mapo.policy.backend.backend_for` (the backend class),
:func:`mapo.policy.load.load_policy` (the transformers model class, the image-only
processor), :meth:`mapo.policy.load.Policy.save` (the standard processor class named in
``processor_config.json``), :func:`mapo.policy.tiny.build_tiny_policy` (the tiny config)
and :mod:`mapo.policy.real_shapes`.

Classes are named, not imported: transformers classes by their name in the
``transformers`` module, mapo classes and functions as ``"module:name"``. They are
looked up when first used, so importing this module imports neither transformers nor
any other part of mapo (the backend and processor modules import it).

Qwen2-VL and Qwen2.5-VL are two entries because transformers has a model class and a
processor class for each; they share mapo's backend and image-only processor.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

# Qwen3-VL's image processor normalises with 0.5 (Qwen2-VL / Qwen2.5-VL: CLIP's mean and std).
HALF_MEAN_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One supported ``model_type`` and the classes that serve it.

    Attributes:
        model_type: ``config.json`` ``model_type`` (``"qwen2_5_vl"``).
        label: human name in messages and docs (``"Qwen2.5-VL"``).
        model_class: transformers ``...ForConditionalGeneration`` class name.
        config_class: transformers config class name.
        standard_processor: transformers processor class name written to ``processor_config.json``
            when saving, so that other tools read the directory as a standard checkpoint.
        image_only_processor: ``"module:Class"`` of mapo's processor without a video processor.
        backend: ``"module:Class"`` of the :class:`mapo.policy.backend.QwenVLBackend` (sub)class.
        tiny_config: ``"module:function"`` ``(TinyPreset, tokenizer) -> config`` of the tiny
            builder; ``None`` when the family has no tiny builder.
        image_norm: (mean, std) of the family's image processor for the tiny builder;
            ``None`` keeps the image processor's default (CLIP's).
    """

    model_type: str
    label: str
    model_class: str
    config_class: str
    standard_processor: str
    image_only_processor: str = "mapo.policy.processor:ImageOnlyQwen2_5_VLProcessor"
    backend: str = "mapo.policy.backend:QwenVLBackend"
    tiny_config: str | None = None
    image_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def model_cls(self) -> type:
        """The transformers model class (imports transformers)."""
        return _transformers_attr(self.model_class)

    def config_cls(self) -> type:
        """The transformers config class (imports transformers)."""
        return _transformers_attr(self.config_class)

    def processor_cls(self) -> type:
        """mapo's image-only processor class."""
        return _resolve(self.image_only_processor)

    def backend_cls(self) -> type:
        """mapo's backend class."""
        return _resolve(self.backend)

    def tiny_config_fn(self) -> Any:
        """The tiny builder's config function (``ValueError`` when the family has none)."""
        if self.tiny_config is None:
            raise ValueError(f"{self.label} ({self.model_type}) has no tiny builder; choose from {list(TINY_ARCHS)}")
        return _resolve(self.tiny_config)


def _transformers_attr(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _resolve(target: str) -> Any:
    """The object named ``"module:name"``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


FAMILIES: dict[str, ModelFamily] = {
    f.model_type: f
    for f in (
        ModelFamily(
            model_type="qwen2_5_vl",
            label="Qwen2.5-VL",
            model_class="Qwen2_5_VLForConditionalGeneration",
            config_class="Qwen2_5_VLConfig",
            standard_processor="Qwen2_5_VLProcessor",
            tiny_config="mapo.policy.tiny:qwen2_5_vl_config",
        ),
        ModelFamily(
            model_type="qwen2_vl",
            label="Qwen2-VL",
            model_class="Qwen2VLForConditionalGeneration",
            config_class="Qwen2VLConfig",
            standard_processor="Qwen2VLProcessor",
        ),
        ModelFamily(
            model_type="qwen3_vl",
            label="Qwen3-VL",
            model_class="Qwen3VLForConditionalGeneration",
            config_class="Qwen3VLConfig",
            standard_processor="Qwen3VLProcessor",
            image_only_processor="mapo.policy.processor:ImageOnlyQwen3VLProcessor",
            backend="mapo.policy.backend:Qwen3VLBackend",
            tiny_config="mapo.policy.tiny:qwen3_vl_config",
            image_norm=(HALF_MEAN_STD, HALF_MEAN_STD),
        ),
    )
}

# model_types (config.json) mapo loads, trains and serves.
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# model_types the tiny builder makes (``build_tiny_policy(arch=...)``, ``mapo sft`` ``policy.arch``).
TINY_ARCHS = tuple(t for t, f in FAMILIES.items() if f.tiny_config is not None)


def unsupported_message(model_type: Any, where: str) -> str:
    """``where`` holds a ``model_type`` mapo does not support; the message lists the registry's families."""
    types, labels = ", ".join(FAMILIES), ", ".join(f.label for f in FAMILIES.values())
    return f"{where} is a {model_type!r} model; mapo supports the model types {types} ({labels})"


def family_of(model_type: Any, where: str = "the model") -> ModelFamily:
    """The registered family of ``model_type``.

    Raises:
        ValueError: ``model_type`` is not registered (the message lists those that are).
    """
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ValueError(unsupported_message(model_type, where))
    return family


__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "TINY_ARCHS", "ModelFamily", "family_of", "unsupported_message"]
