"""Qwen-VL processors without a video processor.

``transformers.Qwen2_5_VLProcessor`` (and ``Qwen3VLProcessor``) insist on a video
processor, and Qwen's video processor needs torchvision, which has no CPU build on
the CPU machines mapo is tested on (docs/policy.md). :class:`ImageOnlyQwen2_5_VLProcessor` and
:class:`ImageOnlyQwen3VLProcessor` are the same processors with images and text
only: same image-token expansion, same ``mm_token_type_ids`` (which transformers
5.x needs for 3-D M-RoPE positions), same chat template. They load the processor
files of any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint and ignore the video part.
Both models use the same PIL image processor (``Qwen2VLImageProcessorPil``); only
its ``patch_size`` (14 or 16) and normalisation constants differ, and those come
from the checkpoint's ``preprocessor_config.json``.

Resizing. The rollout resizes every view itself with ``mapo.agent.tools.smart_resize``
(the coordinate frame the model sees must be known exactly). The image
processor keeps ``do_resize=True`` but its ``[min_pixels, max_pixels]`` range is
set to contain the tool's view budgets, so Qwen's smart-resize is the identity on
such images (sides are already multiples of 28 and the area is in range);
:func:`check_no_resize` verifies this for a given size.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

from mapo.agent.tools import ToolConfig, with_factor
from mapo.policy.families import FAMILIES, family_of

# Qwen2.5-VL's own defaults (preprocessor_config.json of the 3B/7B checkpoints).
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056


def _init_without_video(processor, image_processor, tokenizer, chat_template, kwargs: dict) -> None:
    """Set the image/video token fields a Qwen processor's __init__ sets, then init with image processor and tokenizer."""
    processor.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
    processor.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
    processor.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    processor.video_token_id = tokenizer.convert_tokens_to_ids(processor.video_token)
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` with ``image_processor`` and ``tokenizer`` only (no video).

    Calling it with ``videos=`` raises; everything else behaves like the parent.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent __init__ passes video_processor positionally; set its fields here instead.
        _init_without_video(self, image_processor, tokenizer, chat_template, kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("ImageOnlyQwen2_5_VLProcessor has no video processor; pass images only")
        return super().__call__(images=images, text=text, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` with ``image_processor`` and ``tokenizer`` only (no video).

    Calling it with ``videos=`` raises; everything else behaves like the parent.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # As above: the parent __init__ wants a video processor; set the token fields it would set.
        _init_without_video(self, image_processor, tokenizer, chat_template, kwargs)
        self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
        self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("ImageOnlyQwen3VLProcessor has no video processor; pass images only")
        return super().__call__(images=images, text=text, **kwargs)


# model_type -> (image-only processor class, the standard processor class named in processor_config.json),
# read from the family registry (the classes above are defined by now, so this module resolves them).
PROCESSOR_CLASSES = {t: (f.processor_cls(), f.standard_processor) for t, f in FAMILIES.items()}

# Normalisation of the Qwen2-VL / Qwen2.5-VL (CLIP's) and Qwen3-VL (HALF_MEAN_STD: 0.5) image processors.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def build_image_processor(
    *,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
    patch_size: int = 14,
    merge_size: int = 2,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's PIL image processor (no torchvision) with the given pixel range.

    ``image_mean``/``image_std`` default to the processor's own (CLIP's, as in Qwen2.5-VL);
    Qwen3-VL uses 0.5 for both.
    """
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    norm = {} if image_mean is None else {"image_mean": list(image_mean), "image_std": list(image_std)}
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=merge_size, **norm
    )


def build_processor(tokenizer, *, model_type: str = "qwen2_5_vl", **image_kwargs):
    """Assemble the image-only processor of ``model_type`` from ``tokenizer`` (with its chat
    template) and a PIL image processor (``image_kwargs``: :func:`build_image_processor`)."""
    cls = family_of(model_type, "build_processor(model_type=...)").processor_cls()
    return cls(
        image_processor=build_image_processor(**image_kwargs),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def check_matches_model(processor, vision_config, where: str) -> None:
    """Refuse a processor whose ``patch_size``/``merge_size`` disagree with the model's vision config.

    Such a pair would still run (the processor's patches are reshaped to whatever the tower
    expects) but the image tokens, the grid and the coordinate frame would all be wrong.
    """
    ip = processor.image_processor
    expected = (int(vision_config.patch_size), int(vision_config.spatial_merge_size))
    found = (int(ip.patch_size), int(ip.merge_size))
    if found != expected:
        raise ValueError(
            f"{where}: the image processor has patch_size={found[0]}, merge_size={found[1]} but the model's "
            f"vision config has patch_size={expected[0]}, spatial_merge_size={expected[1]}; fix "
            "preprocessor_config.json (it belongs to another model)"
        )


def processor_factor(processor) -> int:
    """Side multiple the processor's images must have: ``patch_size * merge_size`` (28 for Qwen2.5-VL, 32 for Qwen3-VL)."""
    ip = processor.image_processor
    return int(ip.patch_size * ip.merge_size)


def pixel_range(processor) -> tuple[int, int] | None:
    """``(min_pixels, max_pixels)`` of a Qwen2-VL image processor, or None when it does not say."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    try:
        return int(size["shortest_edge"]), int(size["longest_edge"])
    except (TypeError, KeyError, ValueError):
        return None


def policy_tool(tool: ToolConfig, processor) -> ToolConfig:
    """``tool`` with the side multiple (patch x merge) of the policy whose ``processor`` sees the images.

    A sample must be fitted for the factor the rollout will use (28 px for Qwen2.5-VL, 32 px for
    Qwen3-VL): fitted for 28 px, a 448x448 image misses an exact 256x256 budget that 32 px meets.
    ``tool`` is returned as it is when the processor does not say (no ``image_processor``).
    """
    if getattr(processor, "image_processor", None) is None:
        return tool
    return with_factor(tool, processor_factor(processor))


def check_no_resize(processor, height: int, width: int) -> None:
    """Raise ``ValueError`` if ``processor`` would resize a ``height x width`` image.

    The rollout passes images already smart-resized to the view it reports to the
    model; a second resize here would silently shift the model's coordinate frame.
    """
    ip = processor.image_processor
    factor = processor_factor(processor)
    lo, hi = ip.size["shortest_edge"], ip.size["longest_edge"]
    if height % factor or width % factor:
        raise ValueError(f"image {height}x{width} is not a multiple of {factor}; smart_resize it first")
    if not lo <= height * width <= hi:
        raise ValueError(
            f"image {height}x{width} ({height * width} px) is outside the processor's pixel range "
            f"[{lo}, {hi}]; the processor would resize it. Build the processor with a range covering "
            "the tool's view budgets (mapo.agent.tools.ToolConfig)."
        )
