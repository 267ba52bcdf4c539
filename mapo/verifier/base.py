"""The semantic verifier interface: how well does a description match an image?

MAPO scores each description ``d_{i,k}`` the policy writes against the crop
``o_{i,k}`` the zoom-in tool returned: ``s_{i,k} = cos(E_text(d), E_image(o))``.
:class:`Verifier` is that function, batched, plus the two embedding halves.

Decisions (the paper names a "CLIP-style" verifier and nothing more):

- ``score`` returns the plain cosine, in ``[-1, 1]``; no temperature, no
  calibration. The advantage estimator standardises scores within a group, so a
  monotone recalibration would not change training.
- Empty or whitespace-only descriptions score ``s_missing`` (default ``-1.0``,
  the minimum cosine) without running the model. The trainer uses the same value
  for tool calls that got no description.
- Descriptions longer than the text encoder's context are truncated (the tail is
  dropped) and flagged in :class:`ScoreResult.truncated`; penalising them is the
  caller's decision (docs/verifier.md).
- Images of any PIL mode are accepted; see :func:`prepare_image` for what is done
  to grayscale, alpha, palette, tiny and huge images before the model sees them.
"""

from __future__ import annotations

import abc
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# A cosine can be no lower than this; a missing description scores it by default.
S_MISSING_DEFAULT = -1.0
# Images are shrunk so that their long side is at most this many times the model's
# input side: the processor would shrink them anyway, and a 20k-pixel image would
# otherwise be resized in full by the (slow) PIL processor.
MAX_SIDE_FACTOR = 4
# Aspect ratios beyond this are centre-cropped: a 1x5000 strip resized to the
# model's short side would allocate gigabytes, and CLIP centre-crops anyway.
MAX_ASPECT = 10.0
# PIL-based processors guess the channel axis from the array shape, and a side of 1
# or 3 pixels is ambiguous; tiny images are upsampled (nearest) to this short side.
MIN_SIDE = 8


@dataclass(frozen=True)
class ScoreResult:
    """Scores of N (description, image) pairs and why some are special.

    Attributes:
        scores: (N,) float32 on CPU, cosine similarity or ``s_missing``.
        truncated: (N,) bool, the description was longer than the text context
            and its tail was dropped before scoring.
        missing: (N,) bool, the description was empty or whitespace-only and scored
            ``s_missing`` without the model.
    """

    scores: torch.Tensor
    truncated: torch.Tensor
    missing: torch.Tensor


def check_texts(texts: Sequence[str], name: str = "descriptions") -> list[str]:
    """Return ``texts`` as a list, or raise ValueError naming ``name`` if any item is not a str."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return list(texts)


def check_images(images: Sequence[Image.Image], name: str = "images") -> list[Image.Image]:
    """Return ``images`` as a list, or raise ValueError naming ``name`` if any item is not a PIL image."""
    if isinstance(images, Image.Image) or not isinstance(images, Sequence):
        raise ValueError(f"{name} must be a list of PIL.Image.Image, got {type(images).__name__}")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ValueError(f"{name}[{i}] must be a PIL.Image.Image, got {type(im).__name__}")
        if im.width < 1 or im.height < 1:
            raise ValueError(f"{name}[{i}] has an empty size {im.size}")
    return list(images)


def prepare_image(image: Image.Image, model_side: int) -> Image.Image:
    """Bring any PIL image to a safe RGB image for a model whose input side is ``model_side``.

    - alpha (RGBA, LA, palette with transparency) is composited onto white, so a
      transparent background does not turn into whatever colour hides under it;
    - other modes (L, 1, I, F, CMYK, P) are converted to RGB;
    - an aspect ratio beyond ``MAX_ASPECT`` is centre-cropped to it;
    - a long side beyond ``MAX_SIDE_FACTOR * model_side`` is downscaled to it;
    - a short side under ``MIN_SIDE`` is upsampled (nearest) to it.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = _wide_to_rgb(image)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if max(w, h) / min(w, h) > MAX_ASPECT:
        cw, ch = (min(w, int(h * MAX_ASPECT)), h) if w > h else (w, min(h, int(w * MAX_ASPECT)))
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
        w, h = image.size
    max_side = MAX_SIDE_FACTOR * model_side
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = image.size
    if min(w, h) < MIN_SIDE:
        scale = MIN_SIDE / min(w, h)
        image = image.resize((max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale))), Image.NEAREST)
    return image


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit and float grayscale to RGB, scaled by the maximum (PIL's own conversion clips at 255)."""
    arr = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    arr = arr - min(0.0, float(arr.min()))
    top = float(arr.max())
    if top > 255.0:
        arr = arr * (255.0 / top)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")


def image_key(image: Image.Image) -> str:
    """Content hash of an (already prepared, RGB) image: same pixels, same key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """A bounded least-recently-used map from image content hash to embedding (D,)."""

    def __init__(self, max_items: int = 4096):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Verifier(abc.ABC):
    """Scores (description, image) pairs by the cosine of their embeddings.

    Subclasses implement :meth:`_embed_texts` (with truncation flags) and
    :meth:`embed_images`; scoring, empty-description handling and input checks
    live here, once.
    """

    s_missing: float = S_MISSING_DEFAULT

    @abc.abstractmethod
    def _embed_texts(self, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed non-empty texts: ((N, D) unit-norm float32 CPU, (N,) bool truncated)."""

    @abc.abstractmethod
    def embed_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
        """(N, D) unit-norm float32 CPU embeddings of N images (any PIL mode)."""

    def embed_text(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """(N, D) unit-norm float32 CPU embeddings of N texts (long ones truncated)."""
        texts = check_texts(texts, "texts")
        _check_batch_size(batch_size)
        return self._embed_texts(texts, batch_size)[0]

    def score(
        self, descriptions: Sequence[str], images: Sequence[Image.Image], *, batch_size: int = 64
    ) -> torch.Tensor:
        """(N,) float32 CPU: cosine of description i with image i; ``s_missing`` for empty ones."""
        return self.score_detailed(descriptions, images, batch_size=batch_size).scores

    def score_detailed(
        self, descriptions: Sequence[str], images: Sequence[Image.Image], *, batch_size: int = 64
    ) -> ScoreResult:
        """Like :meth:`score`, with per-pair ``truncated`` and ``missing`` flags."""
        descriptions = check_texts(descriptions, "descriptions")
        images = check_images(images, "images")
        _check_batch_size(batch_size)
        if len(descriptions) != len(images):
            raise ValueError(
                f"descriptions and images must pair up one to one, got {len(descriptions)} descriptions "
                f"and {len(images)} images"
            )
        n = len(descriptions)
        missing = torch.tensor([not d.strip() for d in descriptions], dtype=torch.bool)
        scores = torch.full((n,), float(self.s_missing), dtype=torch.float32)
        truncated = torch.zeros(n, dtype=torch.bool)
        present = (~missing).nonzero().flatten().tolist()
        if present:
            text_emb, text_trunc = self._embed_texts([descriptions[i].strip() for i in present], batch_size)
            image_emb = self.embed_images([images[i] for i in present], batch_size=batch_size)
            scores[present] = (text_emb * image_emb).sum(-1)
            truncated[present] = text_trunc
        return ScoreResult(scores=scores, truncated=truncated, missing=missing)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
