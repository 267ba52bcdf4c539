"""Qwen2.5-VL processor without a video processor.

``transformers.Qwen2_5_VLProcessor`` insists on a video processor, and Qwen's
video processor needs torchvision, which has no CPU build on our machines
(DESIGN §7). :class:`ImageOnlyQwen2_5_VLProcessor` is the same processor with
images and text only: same image-token expansion, same ``mm_token_type_ids``
(which transformers 5.x Qwen2.5-VL needs for 3-D M-RoPE positions), same chat
template. It loads the processor files of any Qwen2.5-VL checkpoint and ignores
their video part.

Resizing. The rollout resizes every view itself with ``mapo.tools.smart_resize``
(the coordinate frame the model sees must be known exactly). The image
processor keeps ``do_resize=True`` but its ``[min_pixels, max_pixels]`` range is
set to contain the tool's view budgets, so Qwen's smart-resize is the identity on
such images (sides are already multiples of 28 and the area is in range);
:func:`check_no_resize` verifies this for a given size.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

# Qwen2.5-VL's own defaults (preprocessor_config.json of the 3B/7B checkpoints).
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` with ``image_processor`` and ``tokenizer`` only (no video).

    Calling it with ``videos=`` raises; everything else behaves like the parent.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent __init__ passes video_processor positionally; set its fields here instead.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("ImageOnlyQwen2_5_VLProcessor has no video processor; pass images only")
        return super().__call__(images=images, text=text, **kwargs)


def build_image_processor(
    *, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS, patch_size: int = 14, merge_size: int = 2
) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's PIL image processor (no torchvision) with the given pixel range."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=merge_size
    )


def build_processor(tokenizer, **image_kwargs) -> ImageOnlyQwen2_5_VLProcessor:
    """Assemble the processor from ``tokenizer`` (with its chat template) and a PIL image processor."""
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=build_image_processor(**image_kwargs),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def processor_factor(processor) -> int:
    """Side multiple the processor's images must have: ``patch_size * merge_size`` (28 for Qwen)."""
    ip = processor.image_processor
    return int(ip.patch_size * ip.merge_size)


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
            "the tool's view budgets (mapo.tools.ToolConfig)."
        )
