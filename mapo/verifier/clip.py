"""The ``clip`` verifier backend: a transformers ``CLIPModel`` (or ``SiglipModel``) from a local directory.

One code path serves a real CLIP (e.g. a local copy of ``openai/clip-vit-large-patch14``)
and the tiny CLIP that ``mapo verifier train`` writes: ``config.json`` + weights,
``preprocessor_config.json`` and a tokenizer, loaded with ``local_files_only=True``.

Choices and departures:

- Image preprocessing uses the PIL backend of the image processor
  (``backend="pil"``): the torchvision backend has no CPU build here. Images are
  first made safe by :func:`mapo.verifier.base.prepare_image`.
- SigLIP directories load too (``model_type: siglip``); their text is padded to
  ``max_length`` because that is how SigLIP was trained. SigLIP 2 (NaFlex) is not
  supported. The score is still the plain cosine, not SigLIP's sigmoid logit.
- ``open_clip`` checkpoints are not supported (open_clip needs torchvision).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from mapo.core.errors import ModelError

from mapo.verifier.base import (
    S_MISSING_DEFAULT,
    EmbeddingCache,
    Verifier,
    check_images,
    image_key,
    prepare_image,
)

SUPPORTED_MODEL_TYPES = ("clip", "siglip")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
# Texts are cut to this many characters per context token before tokenizing, so a
# megabyte of text costs no more than a long sentence; anything cut is flagged.
CHARS_PER_TOKEN_CAP = 32
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ClipVerifier(Verifier):
    """A :class:`Verifier` over a loaded CLIP/SigLIP model; build it with :func:`load_verifier`.

    Args:
        model: a ``CLIPModel`` or ``SiglipModel`` (moved to ``device``/``dtype`` here).
        tokenizer: the model's tokenizer.
        image_processor: the model's PIL image processor.
        device, dtype: where and in which precision the model runs; results are
            always float32 on CPU.
        cache_images: keep image embeddings keyed by pixel content (the same crop
            scored against G descriptions is embedded once).
        cache_size: maximum number of cached image embeddings.
        s_missing: score of an empty description.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        image_processor,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_images: bool = True,
        cache_size: int = 4096,
        s_missing: float = S_MISSING_DEFAULT,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.s_missing = float(s_missing)
        self.model_type = model.config.model_type
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)
        self.image_side = int(model.config.vision_config.image_size)
        self.cache = EmbeddingCache(cache_size) if cache_images else None

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return int(self.model.config.projection_dim) if self.model_type == "clip" else int(
            self.model.config.text_config.hidden_size
        )

    def _embed_texts(self, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((N, D) unit-norm float32 CPU, (N,) bool truncated) for non-empty texts."""
        cap = self.max_text_tokens * CHARS_PER_TOKEN_CAP
        char_cut = [len(t) > cap for t in texts]
        texts = [t[:cap] for t in texts]
        lengths = [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]
        truncated = torch.tensor([c or n > self.max_text_tokens for c, n in zip(char_cut, lengths)], dtype=torch.bool)
        padding = "max_length" if self.model_type == "siglip" else True
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                padding=padding,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            )
            inputs = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            if self.model_type == "siglip":
                inputs.pop("attention_mask", None)  # SigLIP attends to padding, as trained
            with torch.inference_mode():
                chunks.append(_features(self.model.get_text_features(**inputs)))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim), truncated

    def embed_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
        """(N, D) unit-norm float32 CPU embeddings; any PIL mode and size is accepted."""
        images = [prepare_image(im, self.image_side) for im in check_images(images)]
        keys = [image_key(im) for im in images] if self.cache is not None else [None] * len(images)
        out: list[torch.Tensor | None] = [self.cache.get(k) if self.cache is not None else None for k in keys]
        todo = [i for i, e in enumerate(out) if e is None]
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            pixels = self.image_processor(images=[images[i] for i in idx], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                emb = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
            for i, e in zip(idx, emb):
                out[i] = e
                if self.cache is not None:
                    self.cache.put(keys[i], e)
        return torch.stack(out) if out else torch.zeros(0, self.dim)  # type: ignore[arg-type]


def _features(output) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor, or an output whose pooler_output holds them)."""
    feats = output if isinstance(output, torch.Tensor) else output.pooler_output
    return F.normalize(feats.float(), dim=-1).cpu()


def check_model_dir(path: str | Path) -> Path:
    """Raise ValueError naming what is missing unless ``path`` is a loadable CLIP/SigLIP directory."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"verifier path {str(path)!r} is not a directory (expected a local CLIP model directory)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} is not a CLIP model directory: config.json is missing")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err or type(err).__name__}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path} is not a CLIP model directory: config.json has model_type={model_type!r}, "
            f"expected one of {list(SUPPORTED_MODEL_TYPES)}"
        )
    missing = []
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if not (path / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise ValueError(f"{path} is not a complete {model_type} model directory: missing {'; '.join(missing)}")
    return path


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` or one of the names in DTYPES."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be a torch.dtype or one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_verifier(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    cache_images: bool = True,
    cache_size: int = 4096,
    s_missing: float = S_MISSING_DEFAULT,
) -> ClipVerifier:
    """Load a CLIP or SigLIP verifier from a local directory (nothing is downloaded).

    Raises ValueError naming the missing piece if ``path`` is not such a directory.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    from mapo.policy import checked_load

    path = check_model_dir(path)
    checked_load.verify_manifest(path)  # a shipped verifier, or a copy of one, wherever it is
    config = checked_load.read_config(path)
    checked_load.check_weight_files(path)
    dtype = resolve_dtype(dtype)
    model_cls = CLIPModel if config["model_type"] == "clip" else SiglipModel
    model = checked_load.from_pretrained_strict(model_cls, path, dtype=dtype)
    from mapo.core.fingerprint import mark_loaded_from

    mark_loaded_from(model, sorted(path.glob("*.safetensors")))
    try:
        with checked_load.quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    except Exception as err:  # noqa: BLE001 - a corrupt tokenizer or processor file, whatever transformers raises
        raise ModelError(checked_load.load_failure(path, "tokenizer or image processor", err)) from None
    return ClipVerifier(
        model,
        tokenizer,
        image_processor,
        device=device,
        dtype=dtype,
        cache_images=cache_images,
        cache_size=cache_size,
        s_missing=s_missing,
    )
