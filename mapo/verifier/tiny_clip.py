"""The embedded default verifier's tiny CLIP: a word-level tokenizer, CLIP's image processor, a ``CLIPModel``.

Saved like any HF CLIP, so :func:`mapo.verifier.load_verifier` loads it through the same code path as a real one.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mapo.verifier.train import VerifierTrainConfig

SPECIAL_TOKENS = ("<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>")
PAD, UNK, BOS, EOS = range(4)  # ids of SPECIAL_TOKENS; EOS must not be 2 (CLIP's legacy argmax pooling)


def build_tokenizer(texts: Sequence[str], max_tokens: int):
    """A lower-cased word-level ``PreTrainedTokenizerFast`` over the words of ``texts`` (+ letters, digits).

    It adds ``<|startoftext|>``/``<|endoftext|>`` around every text like CLIP's tokenizer,
    and saves as a plain ``tokenizer.json`` that ``AutoTokenizer`` loads offline.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    words = set(string.ascii_lowercase) | set(string.digits)
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(words - set(SPECIAL_TOKENS)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK]))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS[BOS]} $A {SPECIAL_TOKENS[EOS]}",
        special_tokens=[(SPECIAL_TOKENS[BOS], BOS), (SPECIAL_TOKENS[EOS], EOS)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[PAD],
        unk_token=SPECIAL_TOKENS[UNK],
        bos_token=SPECIAL_TOKENS[BOS],
        eos_token=SPECIAL_TOKENS[EOS],
        model_max_length=max_tokens,
    )


def build_image_processor(image_size: int):
    """CLIP's PIL image processor, squashing to ``image_size`` square (no centre crop)."""
    from transformers import CLIPImageProcessorPil

    side = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size=side, crop_size=side, do_center_crop=False)


def build_tiny_clip(config: VerifierTrainConfig, vocab_size: int):
    """A randomly initialised transformers ``CLIPModel`` sized by ``config``."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=vocab_size, hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.heads,
        max_position_embeddings=config.max_text_tokens, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )
    vision = dict(
        hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.heads,
        image_size=config.image_size, patch_size=config.patch_size,
    )
    torch.manual_seed(config.seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim,
                                logit_scale_init_value=math.log(config.logit_scale_init)))
